"""Model folders are written by one user and read by another: `archivetag models smoke` or
`pull` runs as root in a container (or as a person at home), the services run as uid 10001 in
the images. Writers leave everything world-readable; a service that still cannot read a file
says so, instead of reporting it missing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from archivetag.runtime.errors import ModelLoadError

DIR_MODE = 0o755
FILE_MODE = 0o644


def make_readable(folder: Path) -> None:
    """Folders 0755 and files 0644 under folder (temporary folders are made 0700, some writers 0600)."""
    folder = Path(folder)
    folder.chmod(DIR_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            Path(root, name).chmod(DIR_MODE)
        for name in files:
            Path(root, name).chmod(FILE_MODE)


def check_readable(folder: Path) -> None:
    """ModelLoadError naming the first file or folder under folder that this process cannot read."""
    folder = Path(folder)
    if not folder.exists():
        return  # the backend reports a missing model, with what to do about it
    _check(folder, os.R_OK | os.X_OK, folder)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            _check(Path(root, name), os.R_OK | os.X_OK, folder)
        for name in files:
            _check(Path(root, name), os.R_OK, folder)


def _check(path: Path, mode: int, folder: Path) -> None:
    if os.access(path, mode):
        return
    info = path.stat()
    raise ModelLoadError(
        f"cannot read {path}: permission denied (owned by uid {info.st_uid}, mode {stat.filemode(info.st_mode)}); "
        f"the service runs as uid {os.geteuid()} (fix: chmod -R a+rX {folder})"
    )
