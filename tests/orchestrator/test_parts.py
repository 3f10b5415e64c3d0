"""The orchestrator's parts in isolation: breaker, fair scheduler, byte budget, tokens, peers, targets."""

from __future__ import annotations

import asyncio

import pytest

import grpc

from archivetag_orchestrator.auth import (
    TokenAuthenticator, TokenError, client_without_auth, is_loopback_peer, load_tokens, parse_tokens,
)
from archivetag_orchestrator.backends import (
    NOT_SERVING, SERVING, UNREACHABLE, Backend, Replica, TargetError, is_backend_fault, parse_target,
)
from archivetag_orchestrator.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from archivetag_orchestrator.fairness import MIB, ByteBudget, FairScheduler, parse_weights
from archivetag.runtime.batcher import BULK, INTERACTIVE
from archivetag_orchestrator.routing import with_image
from archivetag.runtime.registry import server
from archivetag.v1 import tagger_pb2, tagging_pb2, view_type_pb2
from archivetag.runtime.errors import QueueFull
from tests.support.waiting import wait_for_async


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once_after_the_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN
    assert not breaker.allow()
    clock.now += 10
    assert breaker.current_state() == HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state == CLOSED
    assert breaker.allow()


def test_a_failed_probe_reopens_the_breaker_for_another_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN
    assert not breaker.allow()
    assert "next probe in 5 s" in breaker.describe()


def test_a_success_resets_the_failure_count():
    breaker = CircuitBreaker(failures=2, cooldown=5, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == CLOSED


class Jobs:
    """Jobs that hold a slot until the test finishes them, recording the order slots were granted."""

    def __init__(self, scheduler: FairScheduler):
        self.scheduler = scheduler
        self.granted: list[tuple[str, int]] = []
        self.finish: dict[tuple[str, int], asyncio.Event] = {}
        self.tasks: list[asyncio.Task] = []

    def start(self, client: str, count: int, lane: str = INTERACTIVE) -> None:
        first = sum(1 for c, _ in self.finish if c == client)
        for n in range(first, first + count):
            self.finish[(client, n)] = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._job(client, n, lane)))

    async def _job(self, client: str, n: int, lane: str) -> None:
        async with self.scheduler.slot(client, lane):
            self.granted.append((client, n))
            await self.finish[(client, n)].wait()

    async def settle(self, running: int, queued: int) -> None:
        """Wait (on the event loop, no clock involved) until the scheduler shows this state."""
        await wait_for_async(lambda: (self.scheduler.running, self.scheduler.queued),
                             lambda seen: seen == (running, queued), describe="(running, queued)")

    async def finish_oldest_running(self) -> None:
        oldest = next(job for job in self.granted if not self.finish[job].is_set())
        self.finish[oldest].set()
        task = self.tasks[list(self.finish).index(oldest)]
        # Ended, and the job given its freed slot has started (every slot granted is recorded).
        await wait_for_async(
            lambda: (task.done(), len(self.granted) - sum(t.done() for t in self.tasks) - self.scheduler.running),
            lambda seen: seen == (True, 0), describe=f"job {oldest} to end and the next to start (ended, unrecorded)")

    async def finish_all(self) -> None:
        for finish in self.finish.values():
            finish.set()
        await asyncio.gather(*self.tasks)


async def flood_then_desk(desk_photos: int) -> Jobs:
    """Two slots held by an import of 20 photos (18 waiting), then a desk client's photos queued."""
    jobs = Jobs(FairScheduler(capacity=2, per_client=2, max_queued=100))
    jobs.start("import", 20)
    await jobs.settle(running=2, queued=18)
    jobs.start("desk", desk_photos)
    await jobs.settle(running=2, queued=18 + desk_photos)
    assert jobs.granted == [("import", 0), ("import", 1)]
    return jobs


async def test_fair_scheduler_gives_a_single_photo_the_next_free_slot_ahead_of_a_flood():
    jobs = await flood_then_desk(1)
    await jobs.finish_oldest_running()
    assert jobs.granted[2] == ("desk", 0)  # the first freed slot, though 18 import photos came first
    while len(jobs.granted) < 21:
        await jobs.finish_oldest_running()
    assert jobs.granted == [("import", 0), ("import", 1), ("desk", 0), *(("import", n) for n in range(2, 20))]
    await jobs.finish_all()
    assert jobs.scheduler.running == 0
    assert jobs.scheduler.queued == 0


async def test_fair_scheduler_alternates_freed_slots_between_a_flood_and_a_client_with_a_few_photos():
    jobs = await flood_then_desk(3)
    while len(jobs.granted) < 8:
        await jobs.finish_oldest_running()
    # Each freed slot goes to the client with less work running: the desk's three photos are
    # granted one freed slot after another, never behind more than one import photo.
    clients = [client for client, _ in jobs.granted]
    assert [i for i, client in enumerate(clients) if client == "desk"] == [2, 4, 6], clients
    await jobs.finish_all()


async def test_an_interactive_photo_takes_the_next_free_slot_ahead_of_its_own_clients_import():
    jobs = Jobs(FairScheduler(capacity=2, per_client=2, max_queued=100))
    jobs.start("app", 10, BULK)
    await jobs.settle(running=2, queued=8)
    jobs.start("app", 1, INTERACTIVE)  # job ("app", 10)
    await jobs.settle(running=2, queued=9)
    await jobs.finish_oldest_running()
    assert jobs.granted[2] == ("app", 10)
    await jobs.finish_all()


async def test_the_interactive_reserve_lets_a_photo_past_a_full_window_but_not_an_import():
    jobs = Jobs(FairScheduler(capacity=2, per_client=2, max_queued=100, interactive_reserve=1))
    jobs.start("import", 5, BULK)
    await jobs.settle(running=2, queued=3)
    jobs.start("desk", 1, INTERACTIVE)
    await jobs.settle(running=3, queued=3)  # granted at once, beyond the window
    assert jobs.granted[2] == ("desk", 0)
    jobs.start("other-import", 1, BULK)
    await jobs.settle(running=3, queued=4)  # bulk stays within the window
    await jobs.finish_all()


async def test_an_interactive_flood_leaves_bulk_its_share_of_the_window():
    jobs = Jobs(FairScheduler(capacity=4, per_client=2, max_queued=100))
    jobs.start("desk", 10, INTERACTIVE)
    jobs.start("import", 10, BULK)
    await jobs.settle(running=4, queued=16)
    for _ in range(8):
        await jobs.finish_oldest_running()
    clients = [client for client, _ in jobs.granted]
    assert clients.count("import") == 6  # half the slots: desk is held to its per-client limit
    assert clients.count("desk") == 6
    await jobs.finish_all()


async def test_weighted_clients_share_freed_slots_in_proportion_to_their_weights():
    jobs = Jobs(FairScheduler(capacity=4, per_client=4, max_queued=100, weights={"archive": 3.0}))
    jobs.start("archive", 40, BULK)
    await jobs.settle(running=4, queued=36)
    jobs.start("museum", 40, BULK)
    await jobs.settle(running=4, queued=76)
    for _ in range(16):
        await jobs.finish_oldest_running()
    later = [client for client, _ in jobs.granted[4:]]
    assert later.count("archive") == 12  # 3 : 1
    assert later.count("museum") == 4
    running = {c: n for c, n in jobs.scheduler.running_by_client.items()}
    assert running == {"archive": 3, "museum": 1}
    await jobs.finish_all()


def test_client_weights_are_parsed_and_malformed_ones_refused():
    assert parse_weights(["archive:3", "museum:0.5"]) == {"archive": 3.0, "museum": 0.5}
    for bad in ("archive", "archive:0", "archive:x", ":2"):
        with pytest.raises(ValueError, match="client-name:positive-number"):
            parse_weights([bad])


async def test_fair_scheduler_caps_each_clients_in_flight_work():
    scheduler = FairScheduler(capacity=8, per_client=3, max_queued=100)
    gate = asyncio.Event()
    peak = {"a": 0}
    running = {"a": 0}

    async def job():
        async with scheduler.slot("a"):
            running["a"] += 1
            peak["a"] = max(peak["a"], running["a"])
            await gate.wait()
            running["a"] -= 1

    tasks = [asyncio.create_task(job()) for _ in range(10)]
    await wait_for_async(lambda: scheduler.queued, lambda queued: queued == 7, describe="queued")
    assert scheduler.running == 3
    gate.set()
    await asyncio.gather(*tasks)
    assert peak["a"] == 3


async def test_fair_scheduler_refuses_a_client_over_its_queue_limit():
    scheduler = FairScheduler(capacity=1, per_client=1, max_queued=2)
    gate = asyncio.Event()

    async def job():
        async with scheduler.slot("a"):
            await gate.wait()

    tasks = [asyncio.create_task(job()) for _ in range(3)]
    await wait_for_async(lambda: scheduler.queued, lambda queued: queued == 2, describe="queued")
    with pytest.raises(QueueFull, match="ARCHIVETAG_CLIENT_MAX_QUEUED"):
        await scheduler.acquire("a")
    gate.set()
    await asyncio.gather(*tasks)
    assert scheduler.running == 0
    assert scheduler.queued == 0


async def test_a_caller_that_leaves_while_waiting_frees_its_place():
    scheduler = FairScheduler(capacity=1, per_client=1, max_queued=10)
    holder = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("b"))
    await wait_for_async(lambda: scheduler.queued, lambda queued: queued == 1, describe="queued")
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert scheduler.queued == 0
    scheduler.release("a")
    assert holder == 0.0  # granted at once: no wait
    assert scheduler.running == 0
    assert scheduler.queued == 0


def test_tokens_are_named_clients_and_short_or_malformed_ones_are_refused(tmp_path):
    tokens = parse_tokens(["# archive apps", "", "desk-app:0123456789abcdef0123"], "test")
    assert tokens == {"0123456789abcdef0123": "desk-app"}
    with pytest.raises(TokenError, match="at least 16"):
        parse_tokens(["desk-app:short"], "test")
    with pytest.raises(TokenError, match="client-name:token"):
        parse_tokens(["no-colon-here-at-all-really"], "test")
    path = tmp_path / "tokens"
    path.write_text("import:ffffffffffffffffffff\n")
    assert load_tokens(path, ["desk:eeeeeeeeeeeeeeeeeeee"]) == {
        "ffffffffffffffffffff": "import", "eeeeeeeeeeeeeeeeeeee": "desk"
    }


def test_authenticator_matches_bearer_tokens_only():
    auth = TokenAuthenticator({"0123456789abcdef0123": "desk-app"})
    assert auth.client_for([("authorization", "Bearer 0123456789abcdef0123")]) == "desk-app"
    assert auth.client_for([("authorization", "bearer 0123456789abcdef0123")]) == "desk-app"
    assert auth.client_for([("authorization", "Bearer 0123456789abcdef0124")]) is None
    assert auth.client_for([("authorization", "Basic 0123456789abcdef0123")]) is None
    assert auth.client_for([]) is None


def test_targets_name_one_or_several_replicas():
    single = parse_target("127.0.0.1:50053")
    assert single.channel_target == "ipv4:127.0.0.1:50053"
    assert single.addresses == ("127.0.0.1:50053",)
    listed = parse_target("127.0.0.1:1,127.0.0.2:2")
    assert listed.channel_target == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert len(listed.addresses) == 2
    named = parse_target("rampp:50053")
    assert named.channel_target == "dns:///rampp:50053"
    assert named.dns_name == "rampp"
    assert parse_target("dns:///rampp:50053").dns_name == "rampp"
    assert parse_target("[::1]:7").channel_target == "ipv6:[::1]:7"
    for bad in ("", "rampp", "127.0.0.1:1,[::1]:2"):
        with pytest.raises(TargetError):
            parse_target(bad)


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.CANCELLED, grpc.StatusCode.FAILED_PRECONDITION])
def test_errors_the_caller_or_the_load_caused_are_not_backend_faults(code):
    assert not is_backend_fault(code, own_deadline=True)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN])
def test_broken_backends_are_faults(code):
    assert is_backend_fault(code, own_deadline=False)


def test_a_deadline_counts_only_when_it_was_the_backends_own():
    assert is_backend_fault(grpc.StatusCode.DEADLINE_EXCEEDED, own_deadline=True)
    assert not is_backend_fault(grpc.StatusCode.DEADLINE_EXCEEDED, own_deadline=False)


async def test_byte_budget_refuses_a_client_over_its_share_and_says_which_limit():
    budget = ByteBudget(total=10 * MIB, per_client=4 * MIB)
    budget.take("a", 3 * MIB)
    with pytest.raises(QueueFull, match="ARCHIVETAG_CLIENT_MAX_MB_IN_FLIGHT"):
        budget.take("a", 2 * MIB)
    budget.take("b", 4 * MIB)
    budget.take("c", 3 * MIB)
    with pytest.raises(QueueFull, match="ARCHIVETAG_MAX_MB_IN_FLIGHT"):
        budget.take("d", 1 * MIB)
    for client, size in (("a", 3), ("b", 4), ("c", 3)):
        budget.give_back(client, size * MIB)
    assert budget.held == 0 and budget.held_by_client == {}


async def test_byte_budget_makes_a_stream_wait_for_room_instead_of_refusing():
    budget = ByteBudget(total=10 * MIB, per_client=4 * MIB)
    budget.take("a", 3 * MIB)
    waiter = asyncio.create_task(budget.wait_and_take("a", 2 * MIB))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    budget.give_back("a", 3 * MIB)
    await asyncio.wait_for(waiter, 5)
    assert budget.held_by_client == {"a": 2 * MIB}


async def test_an_image_larger_than_a_clients_whole_share_is_refused_at_once():
    budget = ByteBudget(total=10 * MIB, per_client=4 * MIB)
    with pytest.raises(QueueFull):
        await budget.wait_and_take("a", 5 * MIB)


@pytest.mark.parametrize("peer", ["ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "ipv6:[::ffff:127.0.0.1]:5000", "unix:/tmp/s"])
def test_loopback_peers(peer):
    assert is_loopback_peer(peer)


@pytest.mark.parametrize("peer", ["ipv4:10.0.0.5:5000", "ipv6:[2001:db8::1]:5000", "ipv4:192.168.1.2:443"])
def test_network_peers(peer):
    assert not is_loopback_peer(peer)


def test_without_auth_only_a_local_caller_may_name_itself():
    header = (("x-archivetag-client", "desk"),)
    assert client_without_auth(header, "ipv4:127.0.0.1:5000") == "desk"
    assert client_without_auth((), "ipv4:127.0.0.1:5000") == "local"
    assert client_without_auth(header, "ipv4:10.0.0.5:5000") == "peer 10.0.0.5"


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_384, 3_000_000])
def test_a_request_serialized_around_the_image_reads_back_as_the_same_message(size):
    image = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    tag = tagger_pb2.TagRequest(max_tags=5, threshold=0.25)
    tag.context.region = "Wallonia"
    parsed = tagger_pb2.TagRequest.FromString(with_image(tag, image))
    assert parsed.image.data == image
    assert (parsed.max_tags, parsed.threshold, parsed.context.region) == (5, 0.25, "Wallonia")
    classify = view_type_pb2.ClassifyRequest.FromString(
        with_image(view_type_pb2.ClassifyRequest(include_embedding=True), image))
    assert classify.image.data == image
    assert classify.include_embedding


def backend_connecting(first_health_wait: float) -> Backend:
    """A Florence-2 backend with one replica whose health watch has not answered yet."""
    backend = Backend(server("florence"), "127.0.0.1:1", deadline=30, enabled=True, breaker=CircuitBreaker(3, 30),
                      reconnect_max=5, resolve_every=30, max_message_bytes=MIB, health_check_every=2,
                      health_check_timeout=3, first_health_wait=first_health_wait)
    backend.replicas["127.0.0.1:1"] = Replica("127.0.0.1:1")  # what the watch starts with
    return backend


async def test_a_request_before_a_backends_first_health_answer_waits_for_it_then_calls():
    backend = backend_connecting(first_health_wait=600)
    assert backend.usable()[0] == tagging_pb2.FALLBACK_REASON_HEALTH_UNKNOWN  # refused, without the wait
    waiting = asyncio.create_task(backend.until_health_known(600))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    backend._set_replica("127.0.0.1:1", SERVING)  # the watch's first answer
    await asyncio.wait_for(waiting, 30)
    assert backend.usable() == (tagging_pb2.FALLBACK_REASON_UNSPECIFIED, "")


@pytest.mark.parametrize("status", [NOT_SERVING, UNREACHABLE])
async def test_a_backend_whose_health_is_known_is_not_waited_for(status):
    backend = backend_connecting(first_health_wait=600)
    backend._set_replica("127.0.0.1:1", status)
    await asyncio.wait_for(backend.until_health_known(600), 30)  # would wait 600 s if it waited
    assert backend.usable()[0] != tagging_pb2.FALLBACK_REASON_HEALTH_UNKNOWN


@pytest.mark.parametrize("option, deadline_left", [(0.05, 600), (600, 0.05)])
async def test_the_wait_for_a_first_health_answer_ends_at_the_option_or_the_deadline(option, deadline_left):
    backend = backend_connecting(first_health_wait=option)
    await asyncio.wait_for(backend.until_health_known(deadline_left), 30)
    assert backend.usable()[0] == tagging_pb2.FALLBACK_REASON_HEALTH_UNKNOWN  # then failed over, as before
