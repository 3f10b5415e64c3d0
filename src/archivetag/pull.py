"""`archivetag models pull`: the real weights, downloaded once into the models directory.

    <models>/florence/   florence-community/Florence-2-{base,large} (native transformers layout)
                         + tag_vocabulary.txt (the RAM++ English tag list: one vocabulary for both taggers)
    <models>/rampp/      ram_plus_swin_large_14m.pth → converted once to safetensors,
                         ram_tag_list.txt, ram_tag_list_threshold.txt
    <models>/siglip/     google/siglip-base-patch16-224 exported by `models export-siglip`

Every file is checked: the RAM++ data files against the SHA-256 recorded here (from the
upstream repository at a pinned commit), the hub files against the hub's own LFS
checksums; each folder gets a CHECKSUMS.sha256 of what was installed. Downloads go to a
temporary folder first, so an interrupted pull never leaves a half-written model.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from archivetag.runtime.checksums import sha256_file
from archivetag.runtime.model_files import make_readable

RAMPP_REPO = "xinyu1205/recognize-anything-plus-model"
RAMPP_CHECKPOINT = "ram_plus_swin_large_14m.pth"
# Tag list and thresholds: xinyu1205/recognize-anything at this commit (Apache-2.0).
RAMPP_DATA_COMMIT = "7cb804a8609e9f4b1a50b7f31436d2df40bb9481"
RAMPP_DATA_FILES = {
    "ram_tag_list.txt": ("ram/data/ram_tag_list.txt",
                         "5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b"),
    "ram_tag_list_threshold.txt": ("ram/data/ram_tag_list_threshold.txt",
                                   "b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447"),
}
FLORENCE_REPOS = {"base": "florence-community/Florence-2-base", "large": "florence-community/Florence-2-large"}
SIGLIP_MODEL = "google/siglip-base-patch16-224"


class PullError(RuntimeError):
    """A download failed; the message says what and why."""


def write_checksums(folder: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.relative_to(folder)}" for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != "CHECKSUMS.sha256"]
    (folder / "CHECKSUMS.sha256").write_text("\n".join(lines) + "\n")


def download(url: str, dest: Path, expected_sha256: str | None = None) -> None:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as exc:
        raise PullError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    if expected_sha256 and sha256_file(dest) != expected_sha256:
        raise PullError(f"{url}: checksum mismatch (expected {expected_sha256}); nothing was installed")


def _hub_download(repo: str, filename: str | None, dest: Path) -> Path:
    """One file (or the whole repo) from the hub into dest; the hub client verifies checksums."""
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        if filename:
            return Path(hf_hub_download(repo, filename, local_dir=dest))
        return Path(snapshot_download(repo, local_dir=dest))
    except Exception as exc:  # noqa: BLE001 - the hub client raises many kinds; all mean "not downloaded"
        raise PullError(f"cannot download {repo}{'/' + filename if filename else ''}: {exc}") from None


def _install(staging: Path, target: Path) -> None:
    write_checksums(staging)
    make_readable(staging)  # the services run as another user (uid 10001 in the images)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(target))


def pull_rampp(models: Path, keep_pth: bool = False) -> None:
    from archivetag.services.rampp.commands import convert_checkpoint_file

    with tempfile.TemporaryDirectory(dir=models) as tmp:
        staging = Path(tmp) / "rampp"
        staging.mkdir()
        for name, (path, sha) in RAMPP_DATA_FILES.items():
            url = f"https://raw.githubusercontent.com/xinyu1205/recognize-anything/{RAMPP_DATA_COMMIT}/{path}"
            download(url, staging / name, sha)
        pth = _hub_download(RAMPP_REPO, RAMPP_CHECKPOINT, Path(tmp) / "hub")
        convert_checkpoint_file(pth, staging)
        if keep_pth:
            shutil.move(str(pth), str(staging / RAMPP_CHECKPOINT))
        _install(staging, models / "rampp")


def pull_florence(models: Path, variant: str) -> None:
    with tempfile.TemporaryDirectory(dir=models) as tmp:
        staging = Path(tmp) / "florence"
        _hub_download(FLORENCE_REPOS[variant], None, staging)
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        vocabulary = models / "rampp" / "ram_tag_list.txt"
        if vocabulary.exists():
            shutil.copyfile(vocabulary, staging / "tag_vocabulary.txt")
        _install(staging, models / "florence")


def pull_siglip(models: Path, model_id: str) -> None:
    from archivetag.services.siglip.commands import export_to_folder

    with tempfile.TemporaryDirectory(dir=models) as tmp:
        staging = Path(tmp) / "siglip"
        hub = Path(tmp) / "hub"
        _hub_download(model_id, None, hub)
        export_to_folder(str(hub), staging, model_id=model_id)
        _install(staging, models / "siglip")


def pull(models: Path, which: list[str], florence_variant: str = "base", siglip_model: str = SIGLIP_MODEL) -> int:
    models.mkdir(parents=True, exist_ok=True)
    steps = {
        "rampp": lambda: pull_rampp(models),  # first: Florence takes its tag vocabulary from it
        "florence": lambda: pull_florence(models, florence_variant),
        "siglip": lambda: pull_siglip(models, siglip_model),
    }
    failed = []
    for name in [n for n in steps if n in which]:
        print(f"pulling {name} ...", file=sys.stderr)
        try:
            steps[name]()
            print(f"{name}: installed in {models / name}", file=sys.stderr)
        except PullError as exc:
            failed.append(name)
            print(f"{name}: {exc}", file=sys.stderr)
    if failed:
        print(f"not installed: {', '.join(failed)}. Offline? `archivetag models smoke` builds small random models "
              "that run the whole stack (meaningless tags).", file=sys.stderr)
        return 1
    return 0
