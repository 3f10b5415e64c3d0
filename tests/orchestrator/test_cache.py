"""The orchestrator's result cache against real model services (smoke models) on loopback: exact
hits, misses when options or models change, opt-out, single-flight, eviction, failover answers never
cached, and two orchestrator replicas sharing one real Redis server."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from archivetag.runtime.model_card import CARD_FILE
from archivetag.v1 import tagging_pb2
from tests.conftest import model_service, orchestrator
from tests.orchestrator.test_orchestrator import (
    ALL_SERVING, TAGGING, TOKEN_ARGS, UNREACHABLE, auth, backend, stub, tag_request, targets, wait_health,
)
from tests.orchestrator.test_faults import VIEW_TYPE, addresses, services, status  # noqa: F401 - services: a fixture
from tests.support.servers import free_port
from tests.support.waiting import wait_for


@contextmanager
def serving_orchestrator(log_dir, *args: str, name: str = "orchestrator"):
    with orchestrator(log_dir, "--no-auth", *args, name=name) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        yield server


@pytest.fixture(scope="module")
def front(services, tmp_path_factory):
    """An orchestrator with the default cache (SQLite) in front of the shared services."""
    with serving_orchestrator(tmp_path_factory.mktemp("cache-front"), *targets(**addresses(services))) as server:
        wait_health(server.address, **ALL_SERVING)
        yield server


def answer_without_cache_fields(reply: tagging_pb2.TagImageResponse) -> tagging_pb2.TagImageResponse:
    copy = tagging_pb2.TagImageResponse()
    copy.CopyFrom(reply)
    copy.ClearField("cached")
    copy.ClearField("context")
    return copy


def florence_calls(address: str) -> int:
    return backend(status(address), "florence").ok_count


def test_a_repeated_photo_is_answered_from_the_cache_exactly_as_the_first_time(front):
    api = stub(front.address)
    first = api.TagImage(tag_request(11, include_embedding=True), timeout=60)
    calls = florence_calls(front.address)
    again_request = tag_request(11, include_embedding=True)
    again_request.context.region = "Wallonia"  # echoed, never part of the answer: still a hit
    again = api.TagImage(again_request, timeout=60)
    assert not first.cached
    assert again.cached
    assert answer_without_cache_fields(again) == answer_without_cache_fields(first)  # tags, caption, view, models, timings
    assert [(t.name, t.confidence) for t in again.tags] == [(t.name, t.confidence) for t in first.tags]
    assert again.caption == first.caption
    assert again.view_type == first.view_type
    assert list(again.models) == list(first.models)
    assert again.tagged_at == first.tagged_at  # the original answer's time
    assert again.context.region == "Wallonia"
    assert florence_calls(front.address) == calls  # the models were not asked again


def test_other_options_and_other_bytes_miss(front):
    api = stub(front.address)
    api.TagImage(tag_request(12), timeout=60)
    assert not api.TagImage(tag_request(12, max_tags=2), timeout=60).cached
    assert not api.TagImage(tag_request(12, threshold=0.0), timeout=60).cached
    assert not api.TagImage(tag_request(12, include_embedding=True), timeout=60).cached
    assert api.TagImage(tag_request(12, max_tags=2), timeout=60).cached
    assert not api.TagImage(tag_request(13), timeout=60).cached


def test_a_request_that_opts_out_is_answered_by_the_models_and_not_stored(front):
    api = stub(front.address)
    first = api.TagImage(tag_request(14), timeout=60)
    entries = status(front.address).cache.entries
    calls = florence_calls(front.address)
    fresh = api.TagImage(tag_request(14, bypass_cache=True), timeout=60)
    assert not fresh.cached
    assert florence_calls(front.address) == calls + 1
    assert fresh.tagged_at.ToNanoseconds() > first.tagged_at.ToNanoseconds()
    assert status(front.address).cache.entries == entries


def test_identical_requests_at_once_call_the_models_once(front):
    api, clients = stub(front.address), 6
    before_calls, before = florence_calls(front.address), status(front.address).cache
    start = threading.Barrier(clients)

    def send(_):
        start.wait()
        return api.TagImage(tag_request(15, max_tags=5), timeout=120)

    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(send, range(clients)))
    after = status(front.address).cache
    assert florence_calls(front.address) == before_calls + 1
    assert sorted(r.cached for r in replies) == [False] + [True] * (clients - 1)
    assert len({r.tagged_at.ToNanoseconds() for r in replies}) == 1
    # Each of the others either waited for the first (shared) or came after it was stored (hit).
    assert (after.shared - before.shared) + (after.hits - before.hits) == clients - 1
    assert after.misses - before.misses == 1


def test_a_stream_item_gets_the_cached_answer_too(front):
    api = stub(front.address)
    first = api.TagImage(tag_request(16), timeout=60)
    items = [tagging_pb2.TagImagesRequest(id=i, request=tag_request(16)) for i in ("a", "b")]
    answers = list(api.TagImages(iter(items), timeout=120))
    assert sorted(a.id for a in answers) == ["a", "b"]
    assert all(a.result.cached for a in answers)
    assert all(answer_without_cache_fields(a.result) == answer_without_cache_fields(first) for a in answers)


def test_status_reports_the_cache(front):
    stub(front.address).TagImage(tag_request(17), timeout=60)
    stub(front.address).TagImage(tag_request(17), timeout=60)
    cache = status(front.address).cache
    assert cache.backend == "sqlite"
    assert cache.entries >= 1
    assert cache.bytes > 0
    assert cache.hits >= 1
    assert cache.misses >= 1
    assert not cache.last_error


def test_a_model_swap_misses(smoke_models, services, tmp_path):
    """The same SigLIP files under a new model-card revision: the orchestrator learns the new identity
    from the restarted service and looks under another key."""
    models = tmp_path / "models"
    shutil.copytree(smoke_models / "siglip", models / "siglip")
    siglip = model_service("siglip", models, tmp_path).start()
    port = siglip.port
    try:
        siglip.wait_status(VIEW_TYPE, "SERVING", timeout=240)
        with serving_orchestrator(tmp_path, *targets(**addresses(services, siglip=siglip.address))) as server:
            wait_health(server.address, **ALL_SERVING)
            api = stub(server.address)
            api.TagImage(tag_request(18), timeout=60)
            assert api.TagImage(tag_request(18), timeout=60).cached

            siglip.__exit__(None, None, None)
            card = json.loads((models / "siglip" / CARD_FILE).read_text())
            card["revision"] = "retrained"
            (models / "siglip" / CARD_FILE).write_text(json.dumps(card))
            siglip = model_service("siglip", models, tmp_path, port=port).start()
            siglip.wait_status(VIEW_TYPE, "SERVING", timeout=240)
            wait_for(lambda: backend(status(server.address), "siglip").model.revision, lambda r: r == "retrained",
                     timeout=120, describe="the orchestrator to see SigLIP's new revision", ignore=(grpc.RpcError,))
            wait_health(server.address, **ALL_SERVING)

            swapped = api.TagImage(tag_request(18), timeout=60)
            assert not swapped.cached
            assert {m.family: m.revision for m in swapped.models}["siglip"] == "retrained"
            assert api.TagImage(tag_request(18), timeout=60).cached
    finally:
        siglip.__exit__(None, None, None)


def test_fallback_answers_are_never_cached(services, tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    with serving_orchestrator(tmp_path, *targets(**addresses(services, florence=dead))) as server:
        wait_health(server.address, florence=UNREACHABLE, rampp="SERVING", siglip="SERVING")
        api = stub(server.address)
        replies = [api.TagImage(tag_request(19), timeout=60) for _ in range(2)]
        assert [r.tagger for r in replies] == ["rampp", "rampp"]
        assert [r.cached for r in replies] == [False, False]
        assert status(server.address).cache.entries == 0


def test_eviction_keeps_the_sqlite_cache_within_its_bound(services, tmp_path):
    # Room for two or three smoke answers (about 600 bytes each): five photos must evict the least recently hit.
    bound = 0.0015
    with serving_orchestrator(tmp_path, "--cache-max-mb", str(bound), *targets(**addresses(services))) as server:
        wait_health(server.address, **ALL_SERVING)
        api = stub(server.address)
        for seed in range(20, 25):
            api.TagImage(tag_request(seed), timeout=60)
        cache = status(server.address).cache
        assert cache.bytes <= bound * 1024 * 1024
        assert cache.evictions >= 1
        assert cache.entries < 5
        assert api.TagImage(tag_request(24), timeout=60).cached  # the newest stays
        assert not api.TagImage(tag_request(20), timeout=60).cached  # the oldest went


@pytest.fixture
def redis_server(tmp_path):
    """A real Redis server (Debian's redis-server, installed by scripts/bootstrap) on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/bootstrap as root, or `apt-get install redis-server`")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru", "--dir", str(tmp_path)]
    with open(tmp_path / "redis.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout,
                 lambda out: out.strip() == "PONG", timeout=30, describe="redis-server to answer PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def test_two_orchestrator_replicas_share_one_redis(services, redis_server, tmp_path):
    args = ("--cache", "redis", "--cache-redis-url", redis_server, *targets(**addresses(services)))
    with serving_orchestrator(tmp_path, *args, name="replica-a") as a, \
            serving_orchestrator(tmp_path, *args, name="replica-b") as b:
        for replica in (a, b):
            wait_health(replica.address, **ALL_SERVING)
        first = stub(a.address).TagImage(tag_request(26), timeout=60)
        b_calls = florence_calls(b.address)
        from_b = stub(b.address).TagImage(tag_request(26), timeout=60)
        assert not first.cached
        assert from_b.cached
        assert answer_without_cache_fields(from_b) == answer_without_cache_fields(first)
        assert florence_calls(b.address) == b_calls  # replica b never asked the models
        cache = status(b.address).cache
        assert cache.backend == "redis"
        assert cache.entries == 1
        assert cache.hits == 1


@contextmanager
def with_tokens(log_dir, *args: str):
    """An orchestrator that knows two clients, desk and import (tests/orchestrator/test_orchestrator.py)."""
    log_dir.mkdir(exist_ok=True)
    with orchestrator(log_dir, *TOKEN_ARGS, *args) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, auth(), **ALL_SERVING)
        yield server


def test_one_clients_answers_are_not_another_clients_unless_the_operator_shares_them(services, tmp_path):
    """The audit: Bob sending Alice's photo got cached: true, her tagged_at and her timings. Per client (the
    default), Bob's request is a miss and his status counts only his own lookups."""
    with with_tokens(tmp_path / "own", *targets(**addresses(services))) as server:
        api = stub(server.address)
        first = api.TagImage(tag_request(30), metadata=auth("desk"), timeout=60)
        other = api.TagImage(tag_request(30), metadata=auth("import"), timeout=60)
        again = api.TagImage(tag_request(30), metadata=auth("desk"), timeout=60)
        assert (first.cached, other.cached, again.cached) == (False, False, True)
        seen_by_import = stub(server.address).GetStatus(tagging_pb2.GetStatusRequest(), metadata=auth("import"),
                                                        timeout=30).cache
        assert (seen_by_import.hits, seen_by_import.misses) == (0, 1)
    with with_tokens(tmp_path / "shared", "--cache-scope", "shared", *targets(**addresses(services))) as server:
        api = stub(server.address)
        first = api.TagImage(tag_request(31), metadata=auth("desk"), timeout=60)
        other = api.TagImage(tag_request(31), metadata=auth("import"), timeout=60)
        assert other.cached
        assert [t.name for t in other.tags] == [t.name for t in first.tags]
        assert other.timings.total_seconds == 0  # none of desk's request's timings
        assert other.tagged_at != first.tagged_at


def cache_file(log_dir, name: str = "orchestrator"):
    return log_dir / f"{name}-cache.sqlite"


def test_a_rotted_stored_answer_is_made_again_and_stored_anew(services, tmp_path):
    with serving_orchestrator(tmp_path, *targets(**addresses(services))) as server:
        wait_health(server.address, **ALL_SERVING)
        api = stub(server.address)
        api.TagImage(tag_request(32), timeout=60)
        with sqlite3.connect(cache_file(tmp_path)) as db:
            assert db.execute("UPDATE results SET value = x'0005ffff'").rowcount == 1  # cut short
        remade = api.TagImage(tag_request(32), timeout=60)
        assert not remade.cached and remade.tags
        assert "get" in status(server.address).cache.last_error
        assert api.TagImage(tag_request(32), timeout=60).cached


def test_an_unusable_cache_file_is_moved_aside_and_the_orchestrator_starts(services, tmp_path):
    cache_file(tmp_path).write_bytes(b"this is not a SQLite database" * 100)
    with serving_orchestrator(tmp_path, *targets(**addresses(services))) as server:
        wait_health(server.address, **ALL_SERVING)
        api = stub(server.address)
        api.TagImage(tag_request(33), timeout=60)
        assert api.TagImage(tag_request(33), timeout=60).cached
    assert [p.name.split(".corrupt-")[0] for p in tmp_path.glob("*.corrupt-*")] == [cache_file(tmp_path).name]


def test_a_cache_file_another_process_holds_locked_costs_the_cache_not_the_answer(services, tmp_path):
    with serving_orchestrator(tmp_path, *targets(**addresses(services))) as server:
        wait_health(server.address, **ALL_SERVING)
        api = stub(server.address)
        holder = sqlite3.connect(cache_file(tmp_path), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # as another process writing would
        try:
            answered = api.TagImage(tag_request(34), timeout=60)
            assert answered.tags and not answered.cached
            assert "put" in status(server.address).cache.last_error
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        api.TagImage(tag_request(35), timeout=60)
        assert api.TagImage(tag_request(35), timeout=60).cached  # stores again once the lock is gone
