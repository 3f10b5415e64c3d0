"""Scale-out on loopback: two RAM++ replicas behind one target; one killed mid-run."""

from __future__ import annotations

import re
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc

from archivetag.v1 import tagging_pb2, tagging_pb2_grpc
from tests.conftest import model_service, orchestrator
from tests.support.image_corpus import encode, photo
from tests.support.servers import free_port

TAGGER = "archivetag.v1.TaggerService"


def served_tag_calls(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    match = re.search(r'archivetag_requests_total\{code="OK",method="/archivetag.v1.TaggerService/Tag"\} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


def request(seed: int) -> tagging_pb2.TagImageRequest:
    r = tagging_pb2.TagImageRequest()
    r.image.data = encode(photo(64 + seed % 9, 48), "PNG")
    return r


def test_two_rampp_replicas_share_the_work_and_losing_one_loses_no_request(smoke_models, tmp_path):
    replicas = [model_service("rampp", smoke_models, tmp_path, metrics_port=free_port()) for _ in range(2)]
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            replica.wait_status(TAGGER, "SERVING", timeout=180)
        target = ",".join(r.address for r in replicas)
        args = ("--no-auth", "--primary-tagger", "rampp", "--disabled-backends", "florence,siglip",
                "--rampp-target", target)
        with orchestrator(tmp_path, *args) as front:
            front.wait_status("archivetag.v1.TaggingService", "SERVING", timeout=60)
            api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(front.address))
            status = api.GetStatus(tagging_pb2.GetStatusRequest(), timeout=5)
            rampp = next(b for b in status.backends if b.name == "rampp")
            assert rampp.replicas == 2 and rampp.serving_replicas == 2

            with ThreadPoolExecutor(4) as pool:
                first = list(pool.map(lambda i: api.TagImage(request(i), timeout=60), range(40)))
            assert all(r.tagger == "rampp" for r in first)
            shares = [served_tag_calls(r.metrics_port) for r in replicas]
            assert all(share >= 5 for share in shares), shares  # both replicas served a share

            answered, killed = [], threading.Event()

            def call(i: int):
                if i == 20:
                    replicas[0].kill()
                    killed.set()
                return api.TagImage(request(i), timeout=60)

            with ThreadPoolExecutor(4) as pool:
                answered = list(pool.map(call, range(100)))
            assert killed.is_set()
            assert len(answered) == 100 and all(r.tagger == "rampp" and r.tags is not None for r in answered)
            status = api.GetStatus(tagging_pb2.GetStatusRequest(), timeout=5)
            rampp = next(b for b in status.backends if b.name == "rampp")
            assert rampp.replicas == 2 and rampp.serving_replicas == 1
    finally:
        for replica in replicas:
            replica.__exit__(None, None, None)
