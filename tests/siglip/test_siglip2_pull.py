"""`archivetag models pull --siglip-model google/siglip2-...`: a SigLIP 2 FixRes checkpoint (Gemma tokenizer) is
pulled from a local hub (a tiny random checkpoint in the hub's layout), exported through the same path, and
served: view types, EmbedText and labels, with the multilingual tokenizer."""

from __future__ import annotations

import tempfile
from pathlib import Path

from archivetag.cli import parse_serve_settings
from archivetag.runtime.model_card import ModelCard
from archivetag.v1 import view_type_pb2
from archivetag_siglip import layout
from archivetag_siglip.backend import SiglipBackend
from archivetag_siglip.layout import read_json
from tests.pull.test_pull import run_pull
from tests.support.local_hub import LocalHub
from tests.support.upstream_repos import unpinned_commit

REPO = "google/siglip2-base-patch16-224"


def test_a_siglip2_checkpoint_pulls_exports_and_serves_text_and_labels(tmp_path):
    from archivetag_siglip.smoke import write_random_checkpoint

    upstream = write_random_checkpoint(tmp_path / "hub" / REPO, siglip2=True)
    (upstream / "README.md").write_text("not loaded\n")
    models = tmp_path / "models"
    with LocalHub() as hub:
        hub.add_repo(REPO, upstream, unpinned_commit(REPO))
        hub.tag_list_url = "http://127.0.0.1:9/unused"
        done = run_pull(models, hub, "--only", "siglip", "--siglip-model", REPO)
    assert done.returncode == 0, done.stderr
    manifest = read_json(models / "siglip" / layout.MANIFEST)
    assert manifest["model"]["id"] == REPO
    assert ModelCard.read(models / "siglip").revision == unpinned_commit(REPO)
    tokenizer = manifest["text_tower"]["tokenizer"]
    assert (tokenizer["scheme"], tokenizer["class"], tokenizer["pad_id"], tokenizer["eos_id"]) == (
        "tokenizers", "Siglip2Tokenizer", 0, 1)

    served_models = Path(tempfile.mkdtemp(prefix="siglip2-served-"))
    (served_models / "siglip").symlink_to((models / "siglip").resolve(), target_is_directory=True)
    backend = SiglipBackend(parse_serve_settings("siglip", "--models", str(served_models), "--device", "cpu"))
    backend.load()
    image, _ = backend.warmup_input()
    labels = view_type_pb2.LabelSet(labels=[view_type_pb2.Label(name="Krankenhaus"),
                                            view_type_pb2.Label(name="église")])
    view, texts = backend.infer_batch([backend.prepare(image, view_type_pb2.ClassifyRequest(labels=labels)),
                                       backend.prepare_text(["病院の写真", "Ein Foto eines Krankenhauses."])],
                                      lambda: False)
    assert view.view_type in (*backend.classes, "unknown")
    assert {name for name, _, _ in view.labels} == {"Krankenhaus", "église"}
    assert texts.embeddings.shape[0] == 2
