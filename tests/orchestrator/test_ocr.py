"""The text in the photo through the orchestrator, with smoke models (real architectures, random weights)
on loopback: Florence-2 reads it when asked, RAM++'s fallback answer says it could not, a bad value is
refused naming the field. Random weights cannot read: the path and the fields are asserted, not the words."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import grpc
import pytest

from archivetag.client import ClientError, TaggingClient, TagItem
from archivetag.stack import archivetag_command
from archivetag.v1 import common_pb2, errors_pb2, tagger_pb2, tagger_pb2_grpc
from tests.conftest import orchestrator
from tests.orchestrator.test_orchestrator import (
    FLORENCE_FAST, SERVING, TAGGING, UNREACHABLE, model_services, targets, wait_health,
)
from tests.support.servers import free_port
from tests.support.text_photo import text_photo_jpeg

FLORENCE_OCR_FAST = (*FLORENCE_FAST, "--florence-ocr-max-new-tokens", "12")
TEXT, REGIONS = common_pb2.OCR_MODE_TEXT, common_pb2.OCR_MODE_TEXT_WITH_REGIONS


@pytest.fixture(scope="module")
def services(smoke_models, tmp_path_factory):
    with model_services(smoke_models, tmp_path_factory.mktemp("ocr-services"), FLORENCE_OCR_FAST) as started:
        yield started


def front_of(tmp_path, **addresses):
    return orchestrator(tmp_path, "--no-auth", *targets(**addresses))


@pytest.fixture(scope="module")
def front(services, tmp_path_factory):
    with front_of(tmp_path_factory.mktemp("ocr-front"), **{n: s.address for n, s in services.items()}) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, florence=SERVING, rampp=SERVING, siglip=SERVING)
        yield server


def test_the_text_comes_from_florence_in_its_own_field(front):
    with TaggingClient(front.address) as client:
        reply = client.tag(text_photo_jpeg(), ocr=TEXT, deadline=120)
    assert reply.tagger == "florence"
    assert reply.ocr.status == common_pb2.OCR_STATUS_READ
    assert reply.ocr.text  # the random model writes words; which ones means nothing
    assert not reply.ocr.regions
    assert reply.caption
    assert not reply.degraded


def test_regions_are_asked_with_their_own_mode_and_their_texts_make_the_text(front):
    with TaggingClient(front.address) as client:
        reply = client.tag(text_photo_jpeg(), ocr=REGIONS, deadline=120)
    assert reply.ocr.status == common_pb2.OCR_STATUS_READ
    assert reply.ocr.text == "\n".join(region.text for region in reply.ocr.regions)
    assert all(len(region.quad) == 8 for region in reply.ocr.regions)


def test_without_the_option_there_is_no_ocr_field(front):
    with TaggingClient(front.address) as client:
        reply = client.tag(text_photo_jpeg(), deadline=120)
    assert not reply.HasField("ocr")
    assert reply.caption


def test_a_stream_item_asks_for_ocr_on_its_own(front):
    items = [TagItem(text_photo_jpeg(), id="sign", ocr=TEXT), TagItem(text_photo_jpeg(), id="plain")]
    with TaggingClient(front.address) as client:
        answers = {a.id: a for a in client.tag_many(items, deadline=180)}
    assert answers["sign"].result.ocr.status == common_pb2.OCR_STATUS_READ
    assert not answers["plain"].result.HasField("ocr")


def test_an_ocr_value_outside_the_enum_is_invalid_argument_naming_the_field(front):
    with TaggingClient(front.address) as client:
        with pytest.raises(ClientError) as caught:
            client.tag(text_photo_jpeg(), ocr=7, deadline=60)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == errors_pb2.ERROR_REASON_FIELD_INVALID
    assert caught.value.field == "ocr"
    assert "not an OcrMode" in caught.value.message


def test_failover_to_rampp_answers_the_tags_and_says_ocr_was_not_available(services, tmp_path):
    addresses = {"florence": f"127.0.0.1:{free_port()}", "rampp": services["rampp"].address,
                 "siglip": services["siglip"].address}
    with front_of(tmp_path, **addresses) as server:
        server.wait_status(TAGGING, "SERVING", timeout=60)
        wait_health(server.address, florence=UNREACHABLE, rampp=SERVING, siglip=SERVING)
        with TaggingClient(server.address) as client:
            reply = client.tag(text_photo_jpeg(), ocr=REGIONS, deadline=120)
    assert reply.tagger == "rampp"
    assert reply.tags
    assert reply.ocr.status == common_pb2.OCR_STATUS_NOT_AVAILABLE
    assert not reply.ocr.text
    assert reply.degraded
    assert "ocr: not available (rampp cannot read text)" in reply.degraded_reasons


def test_rampp_asked_directly_answers_its_tags_with_ocr_not_available(services):
    request = tagger_pb2.TagRequest(ocr=TEXT)
    request.image.data = text_photo_jpeg()
    with grpc.insecure_channel(services["rampp"].address) as channel:
        reply = tagger_pb2_grpc.TaggerServiceStub(channel).Tag(request, timeout=60)
    assert reply.tags
    assert reply.ocr.status == common_pb2.OCR_STATUS_NOT_AVAILABLE


def test_tag_stores_the_text_shows_it_and_a_second_run_finds_it_done(front, tmp_path):
    sign = tmp_path / "photos" / "sign.jpg"
    sign.parent.mkdir()
    sign.write_bytes(text_photo_jpeg())
    db = tmp_path / "results.sqlite"
    argv = archivetag_command("tag", str(sign.parent), "--db", str(db), "--target", front.address, "--no-progress",
                              "--ocr-regions")
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert f"text: {sign.resolve()}: " in first.stderr
    with sqlite3.connect(db) as con:
        stored = con.execute("SELECT o.status, o.text FROM files f JOIN ocr_texts o ON o.result_id = f.result_id").fetchall()
        regions = con.execute("SELECT text FROM ocr_regions ORDER BY position").fetchall()
    assert [status for status, _ in stored] == ["read"]
    assert stored[0][1] == "\n".join(text for (text,) in regions)

    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert "1 already done" in again.stderr.strip().splitlines()[-1]


def test_tag_json_prints_the_text_field(front, tmp_path):
    sign = tmp_path / "sign.jpg"
    sign.write_bytes(text_photo_jpeg())
    result = subprocess.run(archivetag_command("tag", str(sign), "--json", "--ocr", "--no-progress", "--target",
                                               front.address), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert line["result"]["ocr"]["status"] == "OCR_STATUS_READ"
    assert line["result"]["ocr"]["text"]
