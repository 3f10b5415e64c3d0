"""`archivetag models pull`: the real weights, at pinned commits, into the models directory.

What each model pulls is declared in its spec (`pull=PullSource(...)` in
services/<model>/archivetag_<model>/spec.py): the hub repository, the files its service loads,
the commit pinned, and the function that makes the download a model folder. Today:

    <models>/rampp/      xinyu1205/recognize-anything-plus-model: ram_plus_swin_large_14m.pth,
                         converted once to model.safetensors; ram_tag_list(_threshold).txt
    <models>/florence/   florence-community/Florence-2-{base,large} (native transformers layout)
                         + tag_vocabulary.txt (the RAM++ English tag list: one vocabulary for both taggers)
    <models>/siglip/     google/siglip-base-patch16-224, exported (ONNX vision tower + text embeddings)

How a pull goes: each repository is asked for its file list at the pinned commit (sizes and
SHA-256 from the hub's LFS metadata); only the files the services load are fetched. The
total and the free disk space are checked before the first byte. Downloads go to
<models>/.staging/<name>/ and resume there after an interruption (HTTP Range: the hub client
of this version discards partial files, so resuming is done here, through its session).
Each finished file is checked against the hub's size and SHA-256 (git blob id for small
files) and refused when it differs. The model folder is built in staging, gets its model card
(archivetag-model.json: repository, commit, file checksums) and only then replaces
<models>/<name>/, so a service never sees a half-installed model.

The hub is huggingface_hub's: HF_ENDPOINT points it at a mirror. The RAM++ tag list comes
from GitHub (--rampp-tag-list-url points it at a mirror) and is checked against the SHA-256
recorded here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from archivetag.runtime import registry
from archivetag.runtime.checksums import sha256_file
from archivetag.runtime.errors import ModelLoadError
from archivetag.runtime.model_card import CARD_FILE, ModelCard
from archivetag.runtime.model_files import make_readable
from archivetag.runtime.options import MODELS_OPTION
from archivetag.runtime.settings import Option, OptionGroup, parse_list
from archivetag.runtime.specs import PullSource, load

STAGING = ".staging"  # inside the models directory: same disk, renamed into place; never a model name
PART = ".part"
CHUNK = 1 << 20  # written to disk every MiB, so a killed pull loses at most this much

# Tag list and thresholds: xinyu1205/recognize-anything at this commit (Apache-2.0).
RAMPP_DATA_COMMIT = "7cb804a8609e9f4b1a50b7f31436d2df40bb9481"
RAMPP_DATA_URL = f"https://raw.githubusercontent.com/xinyu1205/recognize-anything/{RAMPP_DATA_COMMIT}/ram/data"
RAMPP_DATA_FILES = {
    "ram_tag_list.txt": "5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b",
    "ram_tag_list_threshold.txt": "b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447",
}
TAG_LIST = "ram_tag_list.txt"
TAG_DATA_DIR = "ram-data"  # <models>/.staging/ram-data: the tag list, shared by RAM++ and Florence-2

PULL_OPTIONS = OptionGroup("pull", (
    Option("revision", [], "Pull these commits instead of the pinned ones: NAME=COMMIT[,NAME=COMMIT] "
           "(NAME: a model, e.g. florence).", parse_list, metavar="NAME=COMMIT"),
    Option("rampp_tag_list_url", RAMPP_DATA_URL, "Folder URL holding ram_tag_list.txt and "
           "ram_tag_list_threshold.txt (xinyu1205/recognize-anything's ram/data at the pinned commit, or a "
           "mirror of it); both are checked against the SHA-256 recorded in archivetag.", metavar="URL"),
    Option("keep_free_mb", 1024, "Free space the pull leaves on the models disk, in MiB: it stops before "
           "downloading when the downloads and conversions would leave less.", int),
))


def pull_option_groups() -> list[OptionGroup]:
    """The pull's own options and each installed model's (its spec's PullSource.options)."""
    own = [g for spec in registry.models() if spec.pull for g in spec.pull.options]
    return [OptionGroup("models", (MODELS_OPTION,)), PULL_OPTIONS, *own]


class PullError(RuntimeError):
    """A model was not installed; the message says what and why."""


# -- what to pull ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One model to pull: its name (<models>/<name>), the repository chosen, and its spec's PullSource."""

    name: str
    repo: str
    pull: PullSource

    @property
    def converted(self) -> bool:
        return self.pull.converted

    @property
    def pinned(self) -> str | None:
        return self.pull.pinned.get(self.repo)


def sources(options) -> dict[str, Source]:
    """Every installed model that declares a pull, its repository chosen by the parsed options."""
    return {spec.name: Source(spec.name, spec.pull.repo(options), spec.pull)
            for spec in registry.models() if spec.pull is not None}


@dataclass
class HubFile:
    name: str
    size: int
    sha256: str | None  # LFS files: the content's SHA-256
    blob_id: str | None  # small files: the git blob id of the content


@dataclass
class Plan:
    source: Source
    commit: str
    pinned: bool
    files: list[HubFile]
    folder: Path  # <models>/.staging/<name>/<commit>: downloads, kept until installed
    have: int = 0  # bytes already on disk from an earlier run
    downloaded: int = 0
    seconds: float = 0.0
    installed_bytes: int = 0
    error: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def to_download(self) -> int:
        return self.size - self.have

    @property
    def needs_bytes(self) -> int:
        """Disk space still to be taken: the rest of the downloads, and a converted copy."""
        return self.to_download + (self.size if self.source.converted else 0)


def parse_revisions(items: list[str], names: list[str]) -> dict[str, str]:
    revisions = {}
    for item in items:
        name, sep, commit = item.partition("=")
        if not sep or not commit or name not in names:
            raise PullError(f"--revision {item!r}: expected NAME=COMMIT with NAME one of {', '.join(names)}")
        revisions[name] = commit
    return revisions


def plan(source: Source, models: Path, revision: str | None) -> Plan:
    """Ask the hub what the commit holds; keep the files the service needs."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    wanted = revision or source.pinned or "main"
    try:
        info = HfApi().model_info(source.repo, revision=wanted, files_metadata=True)
    except HfHubHTTPError as exc:
        raise PullError(f"{source.repo} at {wanted}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001 - connection refused, DNS, TLS: all mean "hub not reachable"
        raise PullError(f"cannot reach the hub for {source.repo} ({type(exc).__name__}: {exc})") from None
    files = [
        HubFile(s.rfilename, s.lfs.size if s.lfs else (s.size or 0), s.lfs.sha256 if s.lfs else None,
                None if s.lfs else s.blob_id)
        for s in info.siblings or []
        if any(fnmatch.fnmatch(s.rfilename, p) for p in source.pull.patterns)
    ]
    unsafe = [f.name for f in files if Path(f.name).is_absolute() or ".." in Path(f.name).parts]
    if unsafe:
        raise PullError(f"{source.repo} at {info.sha} lists files outside the repository ({unsafe[0]!r}): refused")
    for pattern in source.pull.required:
        if not any(fnmatch.fnmatch(f.name, pattern) for f in files):
            raise PullError(f"{source.repo} at {info.sha} has no {pattern}: not the checkpoint this service loads")
    assert info.sha is not None  # the hub names the commit it answered for
    result = Plan(source, info.sha, pinned=wanted == info.sha, files=files,
                  folder=models / STAGING / source.name / info.sha)
    result.have = sum(downloaded_bytes(result.folder, f) for f in files)
    return result


def downloaded_bytes(folder: Path, file: HubFile) -> int:
    done, part = folder / file.name, folder / (file.name + PART)
    if done.is_file():
        return done.stat().st_size
    return min(part.stat().st_size, file.size) if part.is_file() else 0


def check_disk_space(models: Path, plans: list[Plan], keep_free: int) -> None:
    needed = sum(p.needs_bytes for p in plans) + keep_free
    free = shutil.disk_usage(models).free
    if free < needed:
        raise PullError(
            f"not enough free space in {models}: the pull needs {human(needed)} "
            f"({human(sum(p.to_download for p in plans))} to download, "
            f"{human(sum(p.needs_bytes - p.to_download for p in plans))} for converted copies, "
            f"{human(keep_free)} kept free by --keep-free-mb) and {human(free)} is free; nothing was downloaded")


# -- downloading ----------------------------------------------------------------------------
def fetch(source: Source, commit: str, file: HubFile, folder: Path) -> int:
    """One file into folder, resuming a .part left by an earlier run; checked, then renamed.

    Returns the bytes downloaded now."""
    from huggingface_hub import get_session, hf_hub_url, hf_raise_for_status
    from huggingface_hub.utils import build_hf_headers
    from tqdm import tqdm

    done, part = folder / file.name, folder / (file.name + PART)
    if done.is_file():
        return 0
    done.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    if have > file.size:
        part.unlink()
        have = 0
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # sizes and ranges count the stored bytes
    if have:
        headers["Range"] = f"bytes={have}-"
    received = 0
    url = hf_hub_url(source.repo, file.name, revision=commit)
    with tqdm(total=file.size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
              desc=f"{source.name}: {file.name}", file=sys.stderr, leave=True) as bar:
        if have < file.size:
            try:
                with get_session().stream("GET", url, headers=headers, follow_redirects=True) as response:
                    if response.status_code >= 400:
                        response.read()  # the hub's error message is in the body
                    hf_raise_for_status(response)
                    if have and response.status_code != 206:  # the server ignored the range: start over
                        have = 0
                        bar.reset(total=file.size)
                    with open(part, "r+b" if have else "wb") as out:
                        out.seek(have)
                        out.truncate()
                        for block in response.iter_bytes(CHUNK):
                            out.write(block)
                            received += len(block)
                            bar.update(len(block))
            except Exception as exc:  # noqa: BLE001 - network and HTTP errors: the .part stays for the next run
                raise PullError(f"{source.repo}/{file.name}: download stopped after {human(have + received)} "
                                f"of {human(file.size)} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                                "run the pull again to resume") from None
    verify(source, file, part)
    os.replace(part, done)
    return received


def verify(source: Source, file: HubFile, path: Path) -> None:
    """Size and checksum as the hub records them; a mismatch deletes the file and refuses."""
    size = path.stat().st_size
    if size != file.size:
        problem = f"has {size} bytes, the hub's metadata says {file.size}"
    elif file.sha256 and (got := sha256_file(path)) != file.sha256:
        problem = f"has SHA-256 {got}, the hub's LFS metadata says {file.sha256}"
    elif file.blob_id and (got := git_blob_id(path)) != file.blob_id:
        problem = f"has git blob id {got}, the hub says {file.blob_id}"
    else:
        return
    path.unlink()
    raise PullError(f"{source.repo}/{file.name} {problem}: the download or the mirror is corrupt. "
                    "The file was deleted and nothing was installed; run the pull again (from another mirror "
                    "if it keeps failing)")


def git_blob_id(path: Path) -> str:
    data = path.read_bytes()  # only small (non-LFS) files are checked this way
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fetch_tag_list(models: Path, base_url: str) -> Path:
    """The RAM++ tag list and thresholds into <models>/.staging/ram-data/, checked against the pinned SHA-256."""
    folder = models / STAGING / TAG_DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, expected in RAMPP_DATA_FILES.items():
        path = folder / name
        if path.is_file() and sha256_file(path) == expected:
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                path.write_bytes(response.read())
        except (urllib.error.URLError, OSError) as exc:
            raise PullError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
        if (got := sha256_file(path)) != expected:
            path.unlink()
            raise PullError(f"{url} has SHA-256 {got}, expected {expected} (xinyu1205/recognize-anything at "
                            f"{RAMPP_DATA_COMMIT}); nothing was installed")
    return folder


# -- building and installing ----------------------------------------------------------------
# Each model's spec names its builder (PullSource.build): builder(plan, build_folder, tag_data) makes
# the model folder from plan.folder (the checked downloads), with these helpers.
def copy_tag_data(tag_data: Path, build: Path) -> None:
    """The RAM++ tag list and thresholds into the build folder."""
    for name in RAMPP_DATA_FILES:
        shutil.copyfile(tag_data / name, build / name)


def write_hub_commit(folder: Path, commit: str) -> None:
    """Where the exporter (hub_commit_of) reads a downloaded folder's commit, as huggingface_hub writes it."""
    metadata = folder / ".cache" / "huggingface" / "download" / "config.json.metadata"
    metadata.parent.mkdir(parents=True, exist_ok=True)
    metadata.write_text(f"{commit}\n\n{time.time()}\n", encoding="utf-8")


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same disk: no second copy of a large file
    except OSError:
        shutil.copyfile(src, dst)


def write_card(p: Plan, build: Path) -> int:
    """The model card of what was installed (it replaces the converter's); returns the installed size."""
    from huggingface_hub import constants

    files = {path.relative_to(build).as_posix(): sha256_file(path)
             for path in sorted(build.rglob("*")) if path.is_file() and path.name != CARD_FILE}
    ModelCard(family=p.source.name, name=p.source.repo, revision=p.commit, smoke=False,
              source=f"{constants.ENDPOINT}/{p.source.repo}", files=files).write(build)
    return sum((build / name).stat().st_size for name in files)


def install(build: Path, target: Path) -> None:
    """Put the finished folder at target; the folder it replaces is moved aside first, then removed.

    Between the two renames target is absent for an instant, never half-written."""
    make_readable(build)  # the services run as another user (uid 10001 in the images)
    aside = target.parent / STAGING / f"{target.name}.replaced"
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists():
        os.replace(target, aside)
    os.replace(build, target)
    shutil.rmtree(aside, ignore_errors=True)


def pull_one(p: Plan, models: Path, tag_data: Path | None) -> None:
    started = time.monotonic()
    for file in p.files:
        p.downloaded += fetch(p.source, p.commit, file, p.folder)
    build = models / STAGING / p.source.name / "build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    load(p.source.pull.build)(p, build, tag_data)
    p.installed_bytes = write_card(p, build)
    install(build, models / p.source.name)
    shutil.rmtree(models / STAGING / p.source.name, ignore_errors=True)
    p.seconds = time.monotonic() - started


def remove_staging(models: Path) -> None:
    """The shared tag-list download, and the staging folder once no other model's downloads wait there."""
    shutil.rmtree(models / STAGING / TAG_DATA_DIR, ignore_errors=True)
    try:
        (models / STAGING).rmdir()
    except OSError:
        pass  # not empty: another model's interrupted pull resumes from it


# -- the command ----------------------------------------------------------------------------
def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def print_plan(plans: list[Plan]) -> None:
    from huggingface_hub import constants

    print(f"models pull from {constants.ENDPOINT} (HF_ENDPOINT):", file=sys.stderr)
    for p in plans:
        note = "" if p.pinned else " (not pinned: the commit main is at now)"
        resumed = f", {human(p.have)} already here" if p.have else ""
        files = f"{len(p.files)} file{'s' if len(p.files) != 1 else ''}"
        print(f"  {p.source.name:<9} {p.source.repo} @ {p.commit[:12]}{note}: {files}, {human(p.size)}{resumed}",
              file=sys.stderr)
    print(f"  total {human(sum(p.size for p in plans))}, {human(sum(p.to_download for p in plans))} to download",
          file=sys.stderr)


def print_summary(plans: list[Plan]) -> None:
    rows = [("model", "repository", "revision", "size", "downloaded", "time", "result")]
    for p in plans:
        rows.append((p.source.name, p.source.repo, p.commit[:12], human(p.installed_bytes or p.size),
                     human(p.downloaded), f"{p.seconds:.1f}s", p.error and "NOT INSTALLED" or "installed"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def pull(models: Path, which: list[str], options, revisions: list[str] | None = None,
         tag_list_url: str = RAMPP_DATA_URL, keep_free_mb: int = 1024) -> int:
    """options: the parsed `models pull` arguments (each model's PullSource.options among them)."""
    models = Path(models).expanduser()
    models.mkdir(parents=True, exist_ok=True)
    available = sources(options)
    # Those that take the tag list first: whatever they build from it is there before the others.
    chosen = sorted((s for name, s in available.items() if name in which), key=lambda s: not s.pull.needs_tag_data)
    try:
        pins = parse_revisions(revisions or [], list(available))
        plans = [plan(s, models, pins.get(s.name)) for s in chosen]
        print_plan(plans)
        check_disk_space(models, plans, keep_free_mb * 1024 * 1024)
    except PullError as exc:
        print(f"models pull: {exc}", file=sys.stderr)
        print("Offline? `archivetag models smoke` builds small random models that run the whole stack "
              "(meaningless tags).", file=sys.stderr)
        return 1
    tag_data: Path | None = None
    try:
        for p in plans:
            try:
                if tag_data is None and p.source.pull.needs_tag_data:
                    tag_data = fetch_tag_list(models, tag_list_url)
                pull_one(p, models, tag_data)
            except PullError as exc:
                p.error = str(exc)
            except (ModelLoadError, RuntimeError, OSError) as exc:  # the converter or exporter refused the files
                p.error = f"the downloaded files could not be made into a model folder: {exc}"
            if p.error:
                print(f"{p.source.name}: {p.error}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was downloaded is kept in {models / STAGING}; run the pull again to resume",
              file=sys.stderr)
        return 130
    if all(not p.error for p in plans):
        remove_staging(models)
    print_summary(plans)
    failed = [p.source.name for p in plans if p.error]
    if failed:
        print(f"not installed: {', '.join(failed)}; what was downloaded is kept in {models / STAGING} "
              "and the next pull resumes from it", file=sys.stderr)
        return 1
    return 0
