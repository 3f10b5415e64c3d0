"""XMP for `archivetag export`: what goes where, merged with what a file already holds, written through exiftool.

exiftool (Phil Harvey's, Debian's libimage-exiftool-perl) reads and writes every field; one
long-lived process is driven through PyExifTool in exiftool's `-stay_open` batch mode. The archivetag
namespace is declared to it in a config file (`CONFIG`), so it writes the provenance as real XMP
structures. Values are handed over as a JSON file (`-json=`), never spliced into command lines.

Every write follows one path: read what the target holds, work out what it should hold (`plan`),
stop there when it already does (a second export writes nothing), else copy the target to a
temporary file beside it, let exiftool edit the copy, and rename the copy over the target
(`os.replace`): an interrupted export leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archivetag.export.records import PhotoRecord

NAMESPACE_URI = "urn:archivetag:xmp:1.0/"
PREFIX = "archivetag"
AT = f"XMP-{PREFIX}:"
SUBJECT = "XMP-dc:Subject"
HIERARCHICAL = "XMP-lr:HierarchicalSubject"
DESCRIPTION = "XMP-dc:Description"
ALT_TEXT = "XMP-iptcCore:AltTextAccessibility"
EXT_DESCRIPTION = "XMP-iptcCore:ExtDescrAccessibility"
LANG_ALT = (DESCRIPTION, ALT_TEXT, EXT_DESCRIPTION)
# Older files (and some cameras and scanners) keep keywords and caption in IPTC-IIM only: read, as the
# person's, when the XMP has none (the MWG's reconciliation), and carried into the XMP; never written.
IPTC_KEYWORDS = "IPTC:Keywords"
IPTC_CAPTION = "IPTC:Caption-Abstract"
# The fields outside archivetag's namespace that export may change (and, in them, only its own entries).
SHARED_FIELDS = (SUBJECT, HIERARCHICAL, DESCRIPTION, ALT_TEXT, EXT_DESCRIPTION)
# rdf:Bag fields are unordered (compared as multisets); archivetag:Tags is a Seq (highest confidence first).
BAG_FIELDS = {SUBJECT, HIERARCHICAL, AT + "Models", AT + "AddedSubject", AT + "AddedHierarchicalSubject",
              AT + "RejectedSubject", AT + "RejectedHierarchicalSubject"}
LIST_FIELDS = BAG_FIELDS | {AT + "Tags"}
FORMAT_VERSION = "1"

# The archivetag namespace, declared to exiftool (its user-defined tag mechanism). Property names
# are what the XMP holds: archivetag:Tags is a Seq of structures, one per machine tag.
CONFIG = f"""# archivetag's XMP namespace for exiftool (written by archivetag.export.xmp; do not edit)
%Image::ExifTool::UserDefined = (
    'Image::ExifTool::XMP::Main' => {{
        {PREFIX} => {{ SubDirectory => {{ TagTable => 'Image::ExifTool::UserDefined::{PREFIX}' }} }},
    }},
);
%Image::ExifTool::UserDefined::{PREFIX} = (
    GROUPS => {{ 0 => 'XMP', 1 => 'XMP-{PREFIX}', 2 => 'Image' }},
    NAMESPACE => {{ '{PREFIX}' => '{NAMESPACE_URI}' }},
    WRITABLE => 'string',
    FormatVersion => {{ }},
    Sha256 => {{ }},
    TaggedAt => {{ }},
    Tagger => {{ }},
    FallbackReason => {{ }},
    MinConfidence => {{ Writable => 'real' }},
    Caption => {{ }},
    OcrText => {{ }},
    ViewType => {{ }},
    ViewConfidence => {{ Writable => 'real' }},
    Tags => {{
        List => 'Seq',
        Struct => {{
            NAMESPACE => '{PREFIX}',
            Name => {{ }}, Kind => {{ }}, Confidence => {{ Writable => 'real' }}, Model => {{ }}, Revision => {{ }},
        }},
    }},
    Models => {{
        List => 'Bag',
        Struct => {{
            NAMESPACE => '{PREFIX}',
            Family => {{ }}, Name => {{ }}, Revision => {{ }}, WeightsSha256 => {{ }}, Smoke => {{ }},
        }},
    }},
    AddedSubject => {{ List => 'Bag' }},
    AddedHierarchicalSubject => {{ List => 'Bag' }},
    RejectedSubject => {{ List => 'Bag' }},
    RejectedHierarchicalSubject => {{ List => 'Bag' }},
    AddedDescription => {{ }},
    AddedAltText => {{ }},
    AddedExtDescription => {{ }},
);
1;
"""


@dataclass(frozen=True)
class Conventions:
    """Where the answers go (the export's options)."""

    min_confidence: float = 0.0
    hierarchy_root: str = "archivetag"
    description: str = "fill-empty"   # or "never": whether the caption may fill an empty dc:description


class ExportError(Exception):
    """One photo could not be exported; the message says why (the others go on)."""


class ExifToolMissing(Exception):
    """exiftool cannot be started; the message says what to install."""


class ExifToolStopped(Exception):
    """The exiftool process ended during the export (killed, out of memory); the message says so."""


def _listed(value: Any) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list) else [value]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _canonical(key: str, value: Any) -> Any:
    """A value as exiftool's JSON reads it back, made comparable: leaves as text, lists as lists."""
    def leaf(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: leaf(x) for k, x in sorted(v.items()) if x not in (None, "")}
        if isinstance(v, list):
            return [leaf(x) for x in v]
        if isinstance(v, bool):
            return "True" if v else "False"
        return str(v)
    if key in BAG_FIELDS:
        return sorted((leaf(v) for v in _listed(value)), key=lambda v: json.dumps(v, sort_keys=True))
    if key in LIST_FIELDS:
        return [leaf(v) for v in _listed(value)]
    return leaf(value) if value not in (None, "") else None


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _number(value: float) -> str:
    return str(round(value, 3))


def hierarchical(path: tuple[str, ...]) -> str:
    """One lr:hierarchicalSubject entry; a '|' inside a level would start a new level, so it becomes '/'."""
    return "|".join(part.replace("|", "/") for part in path if part)


def wanted_keywords(record: PhotoRecord, conventions: Conventions) -> tuple[list[str], list[str]]:
    """(dc:subject keywords, lr:hierarchicalSubject entries) for a photo's tags over the floor."""
    tags = record.machine_tags(conventions.min_confidence)
    flat = _unique(t.name for t in tags)
    tree = _unique(hierarchical((conventions.hierarchy_root, "view type" if t.kind == "view type" else "tags", t.name))
                   for t in tags)
    return flat, tree


def _merge_list(current: list[str], added_before: list[str], rejected_before: list[str],
                wanted: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(the field's new list, what archivetag added to it, what a person removed from archivetag's entries).

    The person's entries are those archivetag did not add: kept, in their order, first. An entry
    archivetag added that is gone now was removed by a person: it stays removed (remembered)."""
    rejected = _unique([*rejected_before, *(k for k in added_before if k not in current)])
    person = [k for k in current if k not in added_before]
    added = [k for k in wanted if k not in person and k not in rejected]
    return [*person, *added], added, rejected


def _owned_text(current: str, added_before: str, new: str, allowed: bool) -> tuple[str, str]:
    """(the field's new value, what archivetag wrote in it): a person's text (one archivetag did not
    write) is never replaced; an empty field or archivetag's own is (re)written or cleared."""
    if current and current != added_before:
        return current, ""
    value = new if allowed else ""
    return value, value


def _struct(**fields: str) -> dict[str, str]:
    """An XMP structure without its empty fields (an unknown revision is left out, not written empty)."""
    return {k: v for k, v in fields.items() if v}


def plan(record: PhotoRecord, current: dict[str, Any], conventions: Conventions) -> dict[str, Any]:
    """What the managed fields should hold after the export ('' or [] for absent), given what they hold now."""
    flat, tree = wanted_keywords(record, conventions)
    def strings(key: str) -> list[str]:
        return [_text(v) for v in _listed(current.get(key))]

    current_subject = strings(SUBJECT)
    if not current_subject and not any(k.startswith(AT) for k in current):
        current_subject = _unique(strings(IPTC_KEYWORDS))
    subject, added_subject, rejected_subject = _merge_list(
        current_subject, strings(AT + "AddedSubject"), strings(AT + "RejectedSubject"), flat)
    # A keyword a person removed takes its hierarchical entries with it.
    tree = [entry for entry in tree if entry.rsplit("|", 1)[-1] not in rejected_subject]
    hier, added_hier, rejected_hier = _merge_list(
        strings(HIERARCHICAL), strings(AT + "AddedHierarchicalSubject"), strings(AT + "RejectedHierarchicalSubject"),
        tree)
    description, added_description = _owned_text(
        _text(current.get(DESCRIPTION)) or _text(current.get(IPTC_CAPTION)),
        _text(current.get(AT + "AddedDescription")), record.caption, conventions.description == "fill-empty")
    alt_text, added_alt = _owned_text(_text(current.get(ALT_TEXT)), _text(current.get(AT + "AddedAltText")),
                                      record.caption, True)
    ext, added_ext = _owned_text(_text(current.get(EXT_DESCRIPTION)), _text(current.get(AT + "AddedExtDescription")),
                                 record.ocr_text, True)
    tags = record.machine_tags(conventions.min_confidence)
    return {
        SUBJECT: subject,
        HIERARCHICAL: hier,
        DESCRIPTION: description,
        ALT_TEXT: alt_text,
        EXT_DESCRIPTION: ext,
        AT + "FormatVersion": FORMAT_VERSION,
        AT + "Sha256": record.sha256,
        AT + "TaggedAt": record.tagged_at,
        AT + "Tagger": record.tagger,
        AT + "FallbackReason": record.fallback_reason,
        AT + "MinConfidence": _number(conventions.min_confidence),
        AT + "Caption": record.caption,
        AT + "OcrText": record.ocr_text,
        AT + "ViewType": "" if record.view_type in ("", "unknown") else record.view_type,
        AT + "ViewConfidence": "" if record.view_type in ("", "unknown") else _number(record.view_confidence),
        AT + "Tags": [_struct(Name=t.name, Kind=t.kind, Confidence=_number(t.confidence), Model=t.model,
                              Revision=t.revision) for t in tags],
        AT + "Models": [_struct(Family=m.family, Name=m.name, Revision=m.revision, WeightsSha256=m.weights_sha256,
                                Smoke="True" if m.smoke else "False") for m in record.models],
        AT + "AddedSubject": added_subject,
        AT + "AddedHierarchicalSubject": added_hier,
        AT + "RejectedSubject": rejected_subject,
        AT + "RejectedHierarchicalSubject": rejected_hier,
        AT + "AddedDescription": added_description,
        AT + "AddedAltText": added_alt,
        AT + "AddedExtDescription": added_ext,
    }


def differs(current: dict[str, Any], target: dict[str, Any]) -> bool:
    """Whether writing `target` would change what the file holds (archivetag's namespace compared whole)."""
    keys = set(target) | {k for k in current if k.startswith(AT)}
    return any(_canonical(k, current.get(k)) != _canonical(k, target.get(k)) for k in keys)


def _entry_edits(key: str, now: list[str], want: list[str]) -> list[str] | None:
    """Arguments that take a keyword field from `now` to `want` by removing and adding archivetag's own
    entries only, so a person's entries are never rewritten (exiftool keeps them exactly as they are:
    its JSON cannot give back every spelling, e.g. TRUE reads as true). None when that cannot express it."""
    removed = [v for v in now if v not in want]
    added = [v for v in want if v not in now]
    if Counter([v for v in now if v not in removed] + added) != Counter(want):
        return None
    if any("\n" in v for v in removed + added):  # exiftool's -stay_open arguments are one per line
        return None
    return [f"-{key}-={v}" for v in removed] + [f"-{key}+={v}" for v in added]


def edits(current: dict[str, Any], target: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(exiftool arguments: deletions and keyword edits, the values to write as JSON) to go from current to
    target. archivetag's namespace is rewritten whole; any other field only where it changes."""
    arguments = [f"-{AT}all="]
    values: dict[str, Any] = {"SourceFile": "*"}
    for key, value in target.items():
        empty = value in ("", [], None)
        if key.startswith(AT):
            if not empty:
                values[key] = value
            continue
        now, want = _canonical(key, current.get(key)), _canonical(key, value)
        if now == want:
            continue
        entry_edits = (_entry_edits(key, [_text(v) for v in _listed(current.get(key))], list(value))
                       if key in (SUBJECT, HIERARCHICAL) and now else None)
        if entry_edits is not None:
            arguments += entry_edits
        elif empty:
            arguments.append(f"-{key}-x-default=" if key in LANG_ALT else f"-{key}=")
        else:
            values[key] = value
    return arguments, values


# -- the exiftool process -------------------------------------------------------------------------
class ExifTool:
    """One exiftool process in -stay_open mode, with archivetag's namespace declared."""

    def __init__(self) -> None:
        import exiftool  # PyExifTool: only the commands that write XMP need it

        self.workdir = Path(tempfile.mkdtemp(prefix="archivetag-export-"))
        self.config = self.workdir / "archivetag.config"
        self.config.write_text(CONFIG)
        self.values = self.workdir / "values.json"
        executable = shutil.which("exiftool")
        if executable is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise ExifToolMissing("exiftool is not installed: `apt-get install libimage-exiftool-perl` (Debian, "
                                  "Ubuntu; scripts/bootstrap does it), `brew install exiftool`, or exiftool.org")
        self.process = exiftool.ExifTool(executable=executable, common_args=["-G1", "-n", "-struct"],
                                          config_file=str(self.config))
        try:
            self.process.run()
        except Exception as exc:  # noqa: BLE001 - PyExifTool raises several kinds; each means "cannot start it"
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise ExifToolMissing(f"exiftool ({executable}) does not start: {exc}") from None
        self.version = self.process.version

    def close(self) -> None:
        try:
            if self.process.running:
                self.process.terminate()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ExifTool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, *params: str | bytes) -> bytes:
        import warnings

        from exiftool.exceptions import ExifToolException

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyExifTool warns when it finds its process gone: said below instead
            alive = self.process.running
        if not alive:
            raise ExifToolStopped("the exiftool process has ended")
        try:
            out = self.process.execute(*params, raw_bytes=True)
        except ExifToolException as exc:
            raise ExifToolStopped(f"exiftool did not answer as expected: {exc}") from None
        assert isinstance(out, bytes)  # raw_bytes
        return out

    def _error(self) -> str:
        err = self.process.last_stderr
        text = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err or "")
        return " ".join(text.split()) or f"exiftool exited with status {self.process.last_status}"

    def read_many(self, paths: list[Path]) -> list[dict[str, Any] | ExportError]:
        """What each file holds now of the managed fields (its XMP: embedded, or the sidecar itself; and
        IPTC keywords and caption), or why it cannot be read. One exiftool call for all of them."""
        if not paths:
            return []
        out = self._run("-j", *(f"-{k}" for k in (*SHARED_FIELDS, IPTC_KEYWORDS, IPTC_CAPTION)), f"-{AT}all",
                        "-ExifTool:Error", *(os.fsencode(p) for p in paths))
        try:
            # Numbers as exiftool printed them (a keyword 1.50 stays 1.50, not 1.5).
            found = json.loads(out.decode("utf-8", "replace"), parse_float=str, parse_int=str) if out.strip() else []
        except ValueError as exc:
            found = [ExportError(f"exiftool's answer could not be read: {exc}")] * len(paths)
        if len(found) != len(paths):  # a file gone between the check and the read: one at a time says which
            if len(paths) == 1:
                return [ExportError(f"exiftool cannot read it: {self._error()}")]
            return [self.read_many([p])[0] for p in paths]
        answers: list[dict[str, Any] | ExportError] = []
        for item in found:
            if isinstance(item, ExportError):
                answers.append(item)
            elif "ExifTool:Error" in item:
                answers.append(ExportError(f"exiftool cannot read it: {item['ExifTool:Error']}"))
            else:
                item.pop("SourceFile", None)
                answers.append(item)
        return answers

    def read(self, path: Path) -> dict[str, Any]:
        found = self.read_many([path])[0]
        if isinstance(found, ExportError):
            raise found
        return found

    def raw_xmp(self, path: Path) -> bytes:
        """The photo's embedded XMP packet as it is (b'' when it has none)."""
        out = self._run("-xmp", "-b", os.fsencode(path))
        return out if self.process.last_status == 0 and b"<x:xmpmeta" in out else b""

    def apply(self, path: Path, deletions: list[str], values: dict[str, Any]) -> None:
        """Edit the file in place (it is archivetag's temporary copy; exiftool itself writes through a
        temporary file too)."""
        self.values.write_text(json.dumps([values], ensure_ascii=False), encoding="utf-8")
        self._run("-overwrite_original", *deletions, f"-json={self.values}", os.fsencode(path))
        if self.process.last_status != 0:
            raise ExportError(f"exiftool could not write it: {self._error()}")


# -- files: read-only checks, temporary copies, atomic replacement -------------------------------
TEMP_MARK = ".archivetag-"


def read_only_reason(target: Path, must_exist: bool) -> str:
    """Why the file cannot be written ('' when it can). A file or folder without write permission counts
    as read-only even for root: an archive marks originals read-only on purpose."""
    folder = target.parent
    try:
        folder_mode = folder.stat().st_mode
    except OSError as exc:
        return f"its folder cannot be read: {exc.strerror}"
    if not folder_mode & 0o222 or not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} is read-only"
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return "it is missing" if must_exist else ""
    except OSError as exc:
        return f"it cannot be read: {exc.strerror}"
    if not mode & 0o222 or not os.access(target, os.W_OK):
        return "it is read-only"
    return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Temporary copies an interrupted export left beside the target (their process is gone)."""
    pattern = re.compile(re.escape("." + target.name + TEMP_MARK) + r"(\d+)-")
    try:
        entries = os.listdir(target.parent)
    except OSError:
        return
    for name in entries:
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            try:
                os.unlink(target.parent / name)
            except OSError:
                pass  # another run got there first, or the folder is read-only: harmless


def temporary_name(target: Path, suffix: str) -> Path:
    return target.parent / f".{target.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def same_bytes(a: Path, b: Path) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                block_a, block_b = fa.read(1 << 20), fb.read(1 << 20)
                if block_a != block_b:
                    return False
                if not block_a:
                    return True
    except FileNotFoundError:
        return False


def commit(temp: Path, target: Path) -> bool:
    """Put the finished temporary file in the target's place (True), or drop it when the target already
    holds the same bytes (False)."""
    if same_bytes(temp, target):
        temp.unlink()
        return False
    with open(temp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temp, target)
    _fsync_dir(target.parent)
    return True


def copy_attributes(source: Path, temp: Path) -> None:
    """The target's permissions (and owner, where we may) on its replacement."""
    st = source.stat()
    os.chmod(temp, st.st_mode & 0o7777)
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.chown(temp, st.st_uid, st.st_gid)
        except OSError:
            pass  # a file system without owners: the permissions still apply


def source_of(target: Path, seed_from: Path | None) -> Path | None:
    """The file whose metadata a write of target starts from: target itself, or for a new sidecar the
    photo (its XMP, or keywords and caption kept in IPTC only)."""
    return target if target.exists() else seed_from


def write(tool: ExifTool, target: Path, record: PhotoRecord, conventions: Conventions,
          seed_from: Path | None = None, current: dict[str, Any] | None = None) -> bool:
    """Merge the record into target (a photo, or a sidecar that may not exist yet; a new sidecar starts
    as a copy of seed_from's embedded XMP). `current`: what source_of(...) holds, when already read.
    True when the file changed."""
    remove_stale_temporaries(target)
    exists = target.exists()
    if current is None:
        source = source_of(target, seed_from)
        current = tool.read(source) if source is not None else {}
    seed = tool.raw_xmp(seed_from) if not exists and seed_from is not None else b""
    wanted = plan(record, current, conventions)
    if exists and not differs(current, wanted):
        return False
    deletions, values = edits(current, wanted)
    temp = temporary_name(target, ".xmp" if target.suffix.lower() == ".xmp" else "")
    try:
        if exists:
            shutil.copyfile(target, temp)
            copy_attributes(target, temp)
        elif seed:
            temp.write_bytes(seed)
        tool.apply(temp, deletions, values)
        return commit(temp, target)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        for leftover in (temp, temp.with_name(temp.name + "_exiftool_tmp")):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
