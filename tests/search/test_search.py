"""Search by words and request-time labels through the real stack: `archivetag tag` into a database,
then `archivetag search`, EmbedText and label sets through an authenticated orchestrator in front of
real RAM++ and SigLIP services (smoke models: real architectures, random weights, so the rankings say
nothing about meaning; what they must show is the contract: counts, order, scores, the model's space).
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from archivetag import vectors
from archivetag.client import ClientError, TaggingClient, label_set
from archivetag.results import models_key
from archivetag.runtime.registry import VIEW_TYPE_SERVICE
from archivetag.stack import archivetag_command
from archivetag.v1 import common_pb2, tagging_pb2, tagging_pb2_grpc, view_type_pb2, view_type_pb2_grpc
from tests.conftest import model_service, orchestrator
from tests.orchestrator.test_orchestrator import wait_health
from tests.support.image_corpus import encode, scene
from tests.support.servers import health_status

ARCHIVETAG = archivetag_command()
TAGGING = "archivetag.v1.TaggingService"
TOKEN = "search-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
PLACES = {"hospital": ["a photo of a hospital ward."], "church": [], "factory": ["a factory.", "an industrial hall."]}


@pytest.fixture(scope="module")
def front(smoke_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("search-services")
    rampp = model_service("rampp", smoke_models, logs).start()
    siglip = model_service("siglip", smoke_models, logs).start()
    try:
        rampp.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=300)
        siglip.wait_status(VIEW_TYPE_SERVICE, "SERVING", timeout=300)
        targets = ("--rampp-target", rampp.address, "--siglip-target", siglip.address,
                   "--disabled-backends", "florence")
        with orchestrator(logs, "--api-tokens", f"desk:{TOKEN}", "--taggers", "rampp,florence", *targets) as server:
            server.wait_status(TAGGING, "SERVING", timeout=120)
            wait_health(server.address, AUTH, rampp="SERVING", siglip="SERVING")
            yield {"orchestrator": server, "siglip": siglip}
    finally:
        for server in (rampp, siglip):
            server.__exit__(None, None, None)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ARCHIVETAG, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tagged(front, tmp_path_factory):
    """Eight photos tagged into a database with the example place-type labels."""
    folder = tmp_path_factory.mktemp("photos")
    for seed in range(8):
        (folder / f"photo-{seed}.png").write_bytes(encode(scene(seed), "PNG"))
    db = tmp_path_factory.mktemp("store") / "results.sqlite"  # its own: the base temp folder is shared
    address = front["orchestrator"].address
    result = run("tag", str(folder), "--db", str(db), "--target", address, "--token", TOKEN, "--no-progress",
                 "--labels", "place-types")
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "db": db, "target": address}


def search(tagged, *args: str) -> subprocess.CompletedProcess:
    return run("search", *args, "--db", str(tagged["db"]), "--target", tagged["target"], "--token", TOKEN)


def test_search_returns_the_requested_number_of_photos_best_first_with_siglips_score(tagged):
    done = search(tagged, "a staircase with graffiti", "--limit", "5", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    matches = answer["matches"]
    assert len(matches) == 5
    assert answer["searched"] == 8
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True)
    assert [m["cosine"] for m in matches] == sorted((m["cosine"] for m in matches), reverse=True)
    for m in matches:
        assert Path(m["path"]).parent == tagged["folder"].resolve()
        assert 0.0 <= m["score"] <= 1.0
        assert m["score"] == pytest.approx(1 / (1 + math.exp(-m["logit"])), abs=1e-4)
    assert answer["model"]["family"] == "siglip"
    text = search(tagged, "a staircase with graffiti", "--limit", "3")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == f"{scores[0]:.4g}"


def test_search_ranks_as_a_brute_force_over_the_stored_embeddings_of_the_texts_model(tagged):
    with TaggingClient(tagged["target"], token=TOKEN) as client:
        embedded = client.embed_text(["an operating theatre"])
    query = np.asarray(embedded.embeddings[0].values, dtype=np.float64)
    with sqlite3.connect(tagged["db"]) as db:
        space = vectors.load_space(db, models_key([embedded.model]))  # the stored vectors, as stored
        paths = dict(db.execute("SELECT result_id, path FROM files").fetchall())
    cosines = {Path(paths[int(result_id)]).name: float(row.astype(np.float64) @ query)
               for result_id, row in zip(space.result_ids, space.matrix)}
    assert len(cosines) == 8
    expected = sorted(cosines, key=lambda name: -cosines[name])
    done = search(tagged, "an operating theatre", "--limit", "8", "--json")
    assert done.returncode == 0, done.stderr
    assert [Path(m["path"]).name for m in json.loads(done.stdout)["matches"]] == expected


def test_embed_text_needs_a_token_and_answers_normalised_embeddings_of_the_siglip_model(tagged, front):
    channel = grpc.insecure_channel(tagged["target"])
    stub = tagging_pb2_grpc.TaggingServiceStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.EmbedText(tagging_pb2.EmbedTextRequest(texts=["church"]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = stub.EmbedText(tagging_pb2.EmbedTextRequest(texts=["church", "An OPERATING theatre!!",
                                                                "an operating theatre"]), metadata=AUTH, timeout=30)
    channel.close()
    vectors = np.asarray([e.values for e in reply.embeddings])
    assert vectors.shape[0] == 3
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # SigLIP's tokenizer lower-cases and drops punctuation: the same tokens, the same embedding.
    assert float(vectors[1] @ vectors[2]) > 0.99999
    assert reply.model.family == "siglip" and reply.model.smoke
    assert reply.logit_bias == pytest.approx(-10.0)


@pytest.mark.parametrize(("texts", "field"), [
    (["church", ""], "texts[1]"),
    (["   "], "texts[0]"),
    (["x" * 1001], "texts[0]"),
    ([], "texts"),
    (["church"] * 65, "texts"),
])
def test_empty_over_long_and_too_many_texts_are_invalid_argument_naming_the_field(tagged, front, texts, field):
    with TaggingClient(tagged["target"], token=TOKEN) as client:
        with pytest.raises(ClientError) as refused:
            client.embed_text(texts)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == field
    assert refused.value.reason_name == "FIELD_INVALID"
    assert field.split("[")[0] in refused.value.message
    # The service stays up and answers the next good request.
    assert health_status(front["siglip"].address, VIEW_TYPE_SERVICE) == "SERVING"
    with TaggingClient(tagged["target"], token=TOKEN) as client:
        assert len(client.embed_text(["church"]).embeddings) == 1


def test_a_label_set_comes_back_on_tag_image_with_sigmoid_probabilities(tagged):
    with TaggingClient(tagged["target"], token=TOKEN) as client:
        embedded = client.embed_text(["a photo of church.", "a photo of a hospital ward."])
        result = client.tag(encode(scene(3), "PNG"), include_embedding=True, labels=label_set(PLACES))
    assert {s.name for s in result.labels} == set(PLACES)
    probabilities = [s.probability for s in result.labels]
    assert probabilities == sorted(probabilities, reverse=True)
    image = np.asarray(result.embedding, dtype=np.float64)
    by_name = {s.name: s for s in result.labels}
    # A label without prompts is the template "a photo of {}."; one prompt is that prompt's own score.
    for name, row in (("church", embedded.embeddings[0]), ("hospital", embedded.embeddings[1])):
        logit = math.exp(embedded.logit_scale) * float(image @ np.asarray(row.values)) + embedded.logit_bias
        assert by_name[name].logit == pytest.approx(logit, abs=1e-3)
        assert by_name[name].probability == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-6)


def test_a_bad_label_set_is_invalid_argument_naming_the_label(tagged, front):
    bad = view_type_pb2.LabelSet(labels=[view_type_pb2.Label(name="church"),
                                         view_type_pb2.Label(name="hospital", prompts=["ok", ""])])
    with TaggingClient(tagged["target"], token=TOKEN) as client:
        with pytest.raises(ClientError) as refused:
            client.tag(encode(scene(1), "PNG"), labels=bad)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == "labels.labels[1].prompts[1]"
    assert health_status(front["siglip"].address, VIEW_TYPE_SERVICE) == "SERVING"


def test_tag_with_labels_stores_every_label_of_the_set_per_photo(tagged):
    from archivetag import labels

    names = {label.name for label in labels.load("place-types").labels}
    with sqlite3.connect(tagged["db"]) as db:
        rows = db.execute("SELECT r.id, l.name, l.probability FROM label_scores l "
                          "JOIN results r ON r.id = l.result_id WHERE r.status = 'ok'").fetchall()
    per_result: dict[int, set[str]] = {}
    for result_id, name, probability in rows:
        per_result.setdefault(result_id, set()).add(name)
        assert 0.0 <= probability <= 1.0
    assert len(per_result) == 8
    assert all(found == names for found in per_result.values())


def test_the_siglip_service_answers_embed_text_itself(front):
    channel = grpc.insecure_channel(front["siglip"].address)
    stub = view_type_pb2_grpc.ViewTypeServiceStub(channel)
    reply = stub.EmbedText(view_type_pb2.ViewTypeServiceEmbedTextRequest(texts=["a hallway", "a roof"]), timeout=30)
    info = stub.GetModelInfo(view_type_pb2.ViewTypeServiceGetModelInfoRequest(), timeout=10)
    channel.close()
    assert len(reply.embeddings) == 2
    assert reply.model.name == info.model.name
    assert info.settings["text_tower"] == "yes"
    assert isinstance(reply.timings, common_pb2.ServiceTimings)
