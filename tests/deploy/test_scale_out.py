"""Scale-out on loopback: two RAM++ replicas behind one target; one killed mid-run."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from archivetag.v1 import tagging_pb2, tagging_pb2_grpc
from tests.conftest import model_service, orchestrator
from tests.support.image_corpus import encode, photo
from tests.support.servers import free_port, metric
from tests.support.waiting import wait_for

TAGGER = "archivetag.v1.TaggerService"


def served_tag_calls(metrics_port: int) -> float:
    return metric(metrics_port, "archivetag_requests_total", code="OK", method="/archivetag.v1.TaggerService/Tag")


def request(seed: int) -> tagging_pb2.TagImageRequest:
    r = tagging_pb2.TagImageRequest()
    r.image.data = encode(photo(64 + seed % 9, 48), "PNG")
    return r


def rampp_replicas(api) -> tuple[int, int]:
    """(replicas, serving replicas) of RAM++ as the orchestrator's own health watch sees them."""
    status = api.GetStatus(tagging_pb2.GetStatusRequest(), timeout=10)
    rampp = next(b for b in status.backends if b.name == "rampp")
    return rampp.replicas, rampp.serving_replicas


def test_two_rampp_replicas_share_the_work_and_losing_one_loses_no_request(smoke_models, tmp_path):
    replicas = [model_service("rampp", smoke_models, tmp_path, metrics_port=free_port()) for _ in range(2)]
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            replica.wait_status(TAGGER, "SERVING", timeout=180)
        target = ",".join(r.address for r in replicas)
        args = ("--no-auth", "--taggers", "rampp,florence", "--disabled-backends", "florence,siglip",
                "--rampp-target", target)
        with orchestrator(tmp_path, *args) as front:
            front.wait_status("archivetag.v1.TaggingService", "SERVING", timeout=60)
            api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(front.address))
            # The orchestrator serves as soon as it runs; its watch finds each replica on its own.
            wait_for(lambda: rampp_replicas(api), lambda seen: seen == (2, 2), timeout=120,
                     describe="both RAM++ replicas SERVING in GetStatus (replicas, serving)")

            first = []

            def both_served_a_share() -> list[float]:
                with ThreadPoolExecutor(4) as pool:
                    first.extend(pool.map(lambda i: api.TagImage(request(i), timeout=120), range(len(first), len(first) + 8)))
                return [served_tag_calls(r.metrics_port) for r in replicas]

            # Round-robin: each replica gets a share (the balancer's own connections may come up
            # one after the other, so keep sending until both have served some).
            wait_for(both_served_a_share, lambda shares: min(shares) >= 5, timeout=300, interval=0,
                     describe="each replica to serve at least 5 calls (calls served per replica)")
            assert {r.tagger for r in first} == {"rampp"}

            killed = threading.Event()

            def call(i: int):
                if i == 20:
                    replicas[0].kill()
                    killed.set()
                return api.TagImage(request(i), timeout=120)

            with ThreadPoolExecutor(4) as pool:
                answered = list(pool.map(call, range(100)))  # raises if any call failed
            assert killed.is_set()
            assert len(answered) == 100
            assert {r.tagger for r in answered} == {"rampp"}
            assert all([m.family for m in r.models] == ["rampp"] for r in answered)  # a RAM++ model answered each
            wait_for(lambda: rampp_replicas(api), lambda seen: seen == (2, 1), timeout=120,
                     describe="the killed replica to be seen as not serving (replicas, serving)")
    finally:
        for replica in replicas:
            replica.__exit__(None, None, None)
