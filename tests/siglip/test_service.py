"""`archivetag serve siglip` as a client sees it: real servers on loopback, tiny random SigLIP models."""

from __future__ import annotations

import base64
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archivetag.runtime.model_card import ModelCard
from archivetag.runtime.registry import VIEW_TYPE_SERVICE
from archivetag_siglip import layout
from archivetag_siglip.layout import read_json
from archivetag.v1 import common_pb2, view_type_pb2, view_type_pb2_grpc
from tests.conftest import model_service
from tests.siglip import models_dir_with, tiny_exports
from tests.support.image_corpus import answers_to_every_case, encode, fuzz_corpus, hostile_corpus, photo
from tests.support.servers import grpcurl, health_status, memory_kib
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def tiny():
    return tiny_exports()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The folder the server may read image.uri paths from."""
    return tmp_path_factory.mktemp("photos")


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory, photos):
    tmp = tmp_path_factory.mktemp("siglip-serve")
    with model_service("siglip", models_dir_with(tmp, tiny.a.export), tmp, "--allowed-roots", str(photos)) as srv:
        srv.wait_status(VIEW_TYPE_SERVICE, "SERVING", timeout=180)
        yield srv


def stub(address: str):
    channel = grpc.insecure_channel(address)
    return channel, view_type_pb2_grpc.ViewTypeServiceStub(channel)


def classify(address: str, data: bytes, include_embedding: bool = False, timeout: float = 30,
             uri: str = "") -> view_type_pb2.ClassifyResponse:
    channel, client = stub(address)
    image = common_pb2.Image(uri=uri) if uri else common_pb2.Image(data=data)
    with channel:
        return client.Classify(view_type_pb2.ClassifyRequest(image=image, include_embedding=include_embedding),
                               timeout=timeout)


def model_info(address: str) -> view_type_pb2.ViewTypeServiceGetModelInfoResponse:
    channel, client = stub(address)
    with channel:
        return client.GetModelInfo(view_type_pb2.ViewTypeServiceGetModelInfoRequest(), timeout=5)


def wait_failed(srv, timeout: float = 180.0) -> view_type_pb2.ViewTypeServiceGetModelInfoResponse:
    def failed(info) -> bool:
        assert info.state.phase != "serving", "a tampered export went SERVING"
        return info.state.phase == "failed"

    try:
        return wait_for(lambda: model_info(srv.address), failed, timeout=timeout,
                        describe="the model phase 'failed' in GetModelInfo", ignore=(grpc.RpcError,))
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {srv.log_tail()}") from None


def direct_siglip(checkpoint, classes: dict[str, list[str]], images) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities, logits) per image and class, straight from transformers' SiglipModel."""
    import torch
    from transformers import AutoTokenizer, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    model = SiglipModel.from_pretrained(str(checkpoint)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    pixels = SiglipImageProcessorPil.from_pretrained(str(checkpoint))(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        ensemble = []
        for prompts in classes.values():
            tokens = tokenizer(prompts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
            # SigLIP uses no attention mask. The model's own forward gives the per-prompt logits;
            # the formula must reproduce them.
            output = model(input_ids=tokens["input_ids"], pixel_values=pixels)
            text = torch.nn.functional.normalize(model.get_text_features(input_ids=tokens["input_ids"]).pooler_output, dim=-1)
            own = image @ text.T * model.logit_scale.exp() + model.logit_bias
            assert torch.allclose(own, output.logits_per_image, atol=1e-4)
            ensemble.append(torch.nn.functional.normalize(text.mean(0), dim=-1))
        logits = image @ torch.stack(ensemble).T * model.logit_scale.exp() + model.logit_bias
    return torch.softmax(logits, dim=-1).numpy(), logits.numpy()


def test_probabilities_equal_a_direct_siglip_computation(server, tiny):
    manifest = read_json(tiny.a.export / layout.MANIFEST)
    images = [photo(96, 64), photo(40, 120), layout.probe_image()]
    probabilities, logits = direct_siglip(tiny.a.checkpoint, manifest["classes"], images)
    for image, want_p, want_logits in zip(images, probabilities, logits):
        reply = classify(server.address, encode(image, "PNG"))
        got = {s.name: (s.probability, s.logit) for s in reply.scores}
        for name, p, logit in zip(manifest["classes"], want_p, want_logits):
            assert got[name][0] == pytest.approx(float(p), abs=1e-4), name
            assert got[name][1] == pytest.approx(float(logit), abs=1e-3), name
        top = list(manifest["classes"])[int(np.argmax(want_p))]
        assert reply.confidence == pytest.approx(float(want_p.max()), abs=1e-4)
        assert reply.view_type in (top, "unknown")
        assert reply.view_type == (top if want_p.max() >= 0.4 else "unknown")


def test_reply_has_every_class_sorted_identity_and_embedding_on_request(server, tiny):
    manifest = read_json(tiny.a.export / layout.MANIFEST)
    plain = classify(server.address, encode(photo(), "JPEG"))
    assert list(plain.embedding) == []
    assert sorted(s.name for s in plain.scores) == sorted(manifest["classes"])
    assert [s.probability for s in plain.scores] == sorted((s.probability for s in plain.scores), reverse=True)
    assert plain.model.smoke
    assert "smoke" in plain.model.name
    assert plain.model.weights_sha256 == manifest["vision"]["sha256"]
    with_embedding = classify(server.address, encode(photo(), "JPEG"), include_embedding=True)
    assert len(with_embedding.embedding) == manifest["vision"]["embedding_dim"]
    assert np.linalg.norm(with_embedding.embedding) == pytest.approx(1.0, abs=1e-5)
    info = model_info(server.address)
    assert list(info.classes) == list(manifest["classes"])
    assert info.model.revision == ModelCard.read(tiny.a.export).revision  # the model card speaks for the folder
    assert info.settings["unknown_threshold"] == "0.4"
    assert "CPUExecutionProvider" in info.settings["providers"]
    assert info.settings["max_batch_size"] == "1"  # the default (0) on a CPU: one image at a time


def test_bad_images_are_invalid_argument_and_the_service_stays_serving(server):
    answers = answers_to_every_case(lambda data: classify(server.address, data))
    assert answers
    assert all(len(reply.scores) == 4 for reply in answers)
    assert health_status(server.address, VIEW_TYPE_SERVICE) == "SERVING"


DECODE_MEMORY = 1024 << 20  # the decode_memory_mb default: what all decodes may hold at once
# Beyond the decodes: message buffers, inference on the shrunk images, allocator slack.
MEMORY_SLACK = 256 << 20


def test_hostile_and_fuzzed_files_are_answered_or_invalid_argument_within_bounded_memory(server):
    rss_before = memory_kib(server.proc.pid, "VmRSS") << 10
    cases = [*hostile_corpus(), *fuzz_corpus()]
    answers = answers_to_every_case(lambda data: classify(server.address, data, timeout=120), cases)
    assert answers and all(len(reply.scores) == 4 for reply in answers)
    assert health_status(server.address, VIEW_TYPE_SERVICE) == "SERVING"
    # The heaviest ones at once: they wait for decode memory instead of adding up.
    heavy = [case.data for case in hostile_corpus() if case.name.endswith(("rgba png", "16-bit grey png"))] * 2
    with ThreadPoolExecutor(len(heavy)) as pool:
        replies = list(pool.map(lambda data: classify(server.address, data, timeout=300), heavy))
    assert all(len(reply.scores) == 4 for reply in replies)
    peak = memory_kib(server.proc.pid, "VmHWM") << 10
    assert peak - rss_before <= DECODE_MEMORY + MEMORY_SLACK, f"peak RSS grew {(peak - rss_before) >> 20} MiB"
    assert health_status(server.address, VIEW_TYPE_SERVICE) == "SERVING"


def test_image_uri_reads_regular_files_only_and_refuses_the_rest_as_invalid_argument(server, photos):
    (photos / "photo.png").write_bytes(encode(photo(), "PNG"))
    os.mkfifo(photos / "fifo.jpg")
    (photos / "loop-a.jpg").symlink_to(photos / "loop-b.jpg")
    (photos / "loop-b.jpg").symlink_to(photos / "loop-a.jpg")
    (photos / "album").mkdir()
    with open(photos / "huge.jpg", "wb") as file:
        file.truncate(1 << 30)  # sparse: 1 GiB that takes no disk
    assert len(classify(server.address, b"", uri=str(photos / "photo.png")).scores) == 4
    refusals = {"fifo.jpg": "a FIFO", "loop-a.jpg": "cannot be opened", "album": "a directory",
                "huge.jpg": "the limit is", "missing.jpg": "cannot be opened"}
    for name, reason in refusals.items():
        with pytest.raises(grpc.RpcError) as info:
            classify(server.address, b"", uri=str(photos / name), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, info.value.details())
        assert reason in info.value.details(), name
    assert health_status(server.address, VIEW_TYPE_SERVICE) == "SERVING"


STREAMS_PER_PEER = 64  # the max_streams_per_peer default


def test_a_flood_of_health_watches_locks_out_neither_checks_nor_classify(server):
    flood = grpc.insecure_channel(server.address)
    watches = [health_pb2_grpc.HealthStub(flood).Watch(health_pb2.HealthCheckRequest(service=VIEW_TYPE_SERVICE))
               for _ in range(300)]
    try:
        outcomes = []
        for watch in watches:
            try:
                outcomes.append(health_pb2.HealthCheckResponse.ServingStatus.Name(next(watch).status))
            except grpc.RpcError as exc:
                outcomes.append(f"{exc.code().name}: {exc.details()}")
        assert outcomes.count("SERVING") == STREAMS_PER_PEER
        refused = [o for o in outcomes if o != "SERVING"]
        assert len(refused) == 300 - STREAMS_PER_PEER
        assert all(o.startswith("RESOURCE_EXHAUSTED") and "MAX_STREAMS_PER_PEER" in o for o in refused), refused[:3]
        # Another client, while the 64 watches stay open:
        assert health_status(server.address, VIEW_TYPE_SERVICE) == "SERVING"
        assert len(classify(server.address, encode(photo(), "PNG")).scores) == 4
    finally:
        for watch in watches:
            watch.cancel()
        flood.close()
    assert wait_for_a_watch(server.address) == "SERVING"  # closed streams give their places back


def wait_for_a_watch(address: str, timeout: float = 30.0) -> str:
    def first_watch_status():
        with grpc.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=VIEW_TYPE_SERVICE))
            try:
                return health_pb2.HealthCheckResponse.ServingStatus.Name(next(watch).status)
            finally:
                watch.cancel()

    return wait_for(first_watch_status, timeout=timeout, ignore=(grpc.RpcError,),
                    describe="a Watch stream to be admitted")


def test_grpcurl_classify_with_a_base64_image(server):
    check = grpcurl(server.address, "grpc.health.v1.Health/Check", data=json.dumps({"service": VIEW_TYPE_SERVICE}))
    assert json.loads(check.stdout)["status"] == "SERVING"
    request = {"image": {"data": base64.b64encode(encode(photo(), "PNG")).decode()}, "include_embedding": True}
    reply = grpcurl(server.address, "archivetag.v1.ViewTypeService/Classify", data=json.dumps(request))
    assert reply.returncode == 0, reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["view_type"] in {"interior", "exterior", "aerial", "detail", "unknown"}
    assert len(answer["scores"]) == 4
    assert len(answer["embedding"]) == 64
    bad = grpcurl(server.address, "archivetag.v1.ViewTypeService/Classify",
                  data=json.dumps({"image": {"data": base64.b64encode(b"not a photo").decode()}}))
    assert bad.returncode != 0
    assert "InvalidArgument" in bad.stderr


@pytest.mark.parametrize("swapped, reason", [
    (layout.TEXT_EMBEDDINGS, "text embeddings"),
    (layout.VISION_ONNX, "SHA-256"),
])
def test_a_file_from_another_model_keeps_the_service_not_serving_and_says_why(tiny, tmp_path, swapped, reason):
    models = models_dir_with(tmp_path, tiny.a.export)
    shutil.copyfile(tiny.b.export / swapped, models / "siglip" / swapped)
    with model_service("siglip", models, tmp_path) as srv:
        info = wait_failed(srv)
        assert reason in info.state.reason
        assert "export-siglip" in info.state.reason
        assert not info.state.serving
        assert health_status(srv.address, VIEW_TYPE_SERVICE) == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as error:
            classify(srv.address, encode(photo(), "PNG"))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason in srv.log_path.read_text()
