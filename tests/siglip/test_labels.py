"""Label sets and texts in the SigLIP backend (tiny random models): limits named by field, the bounded
prompt-embedding cache, and images and texts answered from one batch."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from archivetag.cli import parse_serve_settings
from archivetag.runtime.errors import InvalidInput
from archivetag.v1 import view_type_pb2
from archivetag_siglip.backend import ImageItem, SiglipBackend, TextItem
from tests.siglip import tiny_exports


def backend(*args: str) -> SiglipBackend:
    models = Path(tempfile.mkdtemp(prefix="siglip-labels-"))
    (models / "siglip").symlink_to(tiny_exports().a.export.resolve(), target_is_directory=True)
    served = SiglipBackend(parse_serve_settings("siglip", "--models", str(models), "--device", "cpu", *args))
    served.load()
    return served


def request(*labels: tuple[str, list[str]], template: str = "") -> view_type_pb2.ClassifyRequest:
    return view_type_pb2.ClassifyRequest(labels=view_type_pb2.LabelSet(
        labels=[view_type_pb2.Label(name=n, prompts=p) for n, p in labels], template=template))


def test_the_label_cache_stays_within_its_bound_and_answers_alike_from_it():
    served = backend("--siglip-label-cache-size", "3")
    image, _ = served.warmup_input()
    labels = request(("hospital", ["a hospital.", "a ward."]), ("church", []), ("school", ["a school.", "a class."]))
    first = served.infer_batch([served.prepare(image, labels)], lambda: False)[0].labels
    assert len(served.label_cache) == 3  # five prompts embedded, three kept
    again = served.infer_batch([served.prepare(image, labels)], lambda: False)[0].labels
    assert [(n, round(p, 6)) for n, p, _ in first] == [(n, round(p, 6)) for n, p, _ in again]
    assert len(served.label_cache) == 3


def test_images_and_texts_share_one_batch():
    served = backend()
    image, _ = served.warmup_input()
    items = [served.prepare(image, request(("church", []))), served.prepare_text(["a church", "a roof"]),
             served.prepare(image, None)]
    assert isinstance(items[0], ImageItem) and isinstance(items[1], TextItem)
    results = served.infer_batch(items, lambda: False)
    assert [name for name, _, _ in results[0].labels] == ["church"]
    assert results[1].embeddings.shape[0] == 2
    assert np.allclose(np.linalg.norm(results[1].embeddings, axis=1), 1.0, atol=1e-5)
    assert results[2].labels == [] and results[2].view_type


@pytest.mark.parametrize(("labels", "template", "field"), [
    ([("", [])], "", "labels.labels[0].name"),
    ([("church", []), ("church", [])], "", "labels.labels[1].name"),
    ([("church", ["fine", " "])], "", "labels.labels[0].prompts[1]"),
    ([("church", ["x" * 1001])], "", "labels.labels[0].prompts[0]"),
    ([("church", [])], "a photo of a church", "labels.template"),
    ([(f"label {i}", []) for i in range(257)], "", "labels.labels"),
])
def test_a_bad_label_set_names_the_field(labels, template, field):
    served = backend()
    image, _ = served.warmup_input()
    with pytest.raises(InvalidInput) as refused:
        served.prepare(image, request(*labels, template=template))
    assert refused.value.field == field
    assert refused.value.reason == "FIELD_INVALID"


def test_the_shipped_place_types_label_set_loads_with_its_prompts():
    from archivetag import labels

    places = labels.load("place-types")
    names = [label.name for label in places.labels]
    for name in ("hospital", "asylum", "school", "factory", "church", "theatre", "hotel", "prison", "house"):
        assert name in names
    assert places.template == "a photo of a {}."
    assert labels.digest(places) and labels.digest(places) == labels.digest(labels.load("place-types"))
    assert labels.parse(["church", "farm"]).labels[1].name == "farm"
    with pytest.raises(labels.LabelsError):
        labels.load("no-such-set")
