"""The four upstream repositories `models pull` reads, laid out as upstream, with tiny random weights.

Same repo ids, file names and folders as the hub repositories; the weights are random, of the
real architectures, in the upstream formats, made by the same builders as the smoke models:
RAM++ `{'model': state_dict}` .pth (services/rampp/archivetag_rampp/random_checkpoint.py), Florence-2 native
transformers layout (services/florence/archivetag_florence/smoke.py), SigLIP transformers checkpoint with its
SentencePiece tokenizer (services/siglip/archivetag_siglip/smoke.py). Files upstream has and the services do not
load (README, .gitattributes, RAM++'s separate tag-embedding file) are there too, so a test can
see that a pull leaves them alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from archivetag.bundled import RAMPP_TAG_LIST, RAMPP_THRESHOLDS
from archivetag.pull import RAMPP_DATA_COMMIT
from tests.support.pulled_repos import FLORENCE_REPOS, PINNED, RAMPP_REPO, SIGLIP_REPO

# Upstream's files, byte for byte (the package ships them; pull checks them against its SHA-256).
TAG_DATA = {"ram_tag_list.txt": RAMPP_TAG_LIST, "ram_tag_list_threshold.txt": RAMPP_THRESHOLDS}
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n"
                        for s in (".bin", ".model", ".onnx", ".pt", ".pth", ".safetensors"))
NOT_LOADED = {RAMPP_REPO: ["README.md", ".gitattributes", "ram_plus_tag_embedding_class_4585_des_51.pth"],
              FLORENCE_REPOS["base"]: ["README.md", ".gitattributes"],
              SIGLIP_REPO: ["README.md", ".gitattributes"]}


def unpinned_commit(repo: str) -> str:
    """A commit for repositories that have no pinned one (pulled at main)."""
    return hashlib.sha1(f"archivetag test hub {repo}".encode()).hexdigest()


def commit_of(repo: str) -> str:
    return PINNED.get(repo) or unpinned_commit(repo)


def tag_names() -> list[str]:
    return RAMPP_TAG_LIST.read_text(encoding="utf-8").splitlines()


def _extras(folder: Path, title: str) -> None:
    (folder / "README.md").write_text(f"# {title}\n\nRandom weights for archivetag's tests.\n", encoding="utf-8")
    (folder / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")


def write_rampp_repo(folder: Path) -> None:
    import torch

    from archivetag_rampp.model import tiny_config
    from archivetag_rampp.random_checkpoint import random_model, write_official_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    model = random_model(tiny_config(len(tag_names())), target_share=0.08)
    write_official_checkpoint(model, folder / "ram_plus_swin_large_14m.pth", extra_entries=True)
    torch.save(model.label_embed.detach().clone(), folder / "ram_plus_tag_embedding_class_4585_des_51.pth")
    _extras(folder, RAMPP_REPO)


def write_florence_repo(folder: Path) -> None:
    from archivetag_florence.smoke import write_random_checkpoint

    write_random_checkpoint(folder, tag_names())
    _extras(folder, FLORENCE_REPOS["base"])


def write_siglip_repo(folder: Path) -> None:
    from archivetag_siglip.smoke import write_random_checkpoint

    write_random_checkpoint(folder)
    _extras(folder, SIGLIP_REPO)


def write_upstream(root: Path) -> dict[str, Path]:
    """Each repository's folder under root/<owner>/<name>; returns repo id → folder."""
    writers = {RAMPP_REPO: write_rampp_repo, FLORENCE_REPOS["base"]: write_florence_repo,
               SIGLIP_REPO: write_siglip_repo}
    folders = {}
    for repo, write in writers.items():
        folders[repo] = root / repo
        write(folders[repo])
    return folders


def serve_upstream(hub, folders: dict[str, Path]) -> str:
    """Add the repositories and the RAM++ tag list to a LocalHub; returns the tag-list folder URL."""
    for repo, folder in folders.items():
        hub.add_repo(repo, folder, commit_of(repo))
    for name, path in TAG_DATA.items():
        url = hub.add_raw(f"xinyu1205/recognize-anything/{RAMPP_DATA_COMMIT}/ram/data/{name}", path)
    return url.rsplit("/", 1)[0]
