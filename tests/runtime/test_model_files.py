"""Model folders are written by one user and served by another (root writes, uid 10001 serves,
in the images): writers leave them readable, and a service that cannot read one says so."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from archivetag.models import write_smoke_models
from archivetag.v1 import tagger_pb2, tagger_pb2_grpc
from tests.support.servers import ServerProcess
from tests.support.waiting import wait_for

NOBODY = 65534


def modes(folder: Path) -> set[tuple[str, str]]:
    found = {("dir", stat.filemode(folder.stat().st_mode))}
    for path in folder.rglob("*"):
        found.add(("dir" if path.is_dir() else "file", stat.filemode(path.stat().st_mode)))
    return found


def test_smoke_models_are_readable_by_every_user_whatever_the_writers_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        write_smoke_models(tmp_path, ("rampp",))
    finally:
        os.umask(previous)
    assert modes(tmp_path / "rampp") == {("dir", "drwxr-xr-x"), ("file", "-rw-r--r--")}


@pytest.fixture
def world_readable_tmp():
    """A folder another user can reach (pytest's own tmp_path is private to its user)."""
    folder = Path(tempfile.mkdtemp(prefix="archivetag-perm-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_service_that_cannot_read_its_model_reports_the_permission_not_a_missing_file(smoke_models,
                                                                                      world_readable_tmp):
    models = world_readable_tmp / "models"
    shutil.copytree(smoke_models / "rampp", models / "rampp")
    models.chmod(0o755)
    unreadable = models / "rampp"
    argv = [sys.executable, "-m", "archivetag.cli", "serve", "rampp", "--models", str(models)]
    if os.geteuid() == 0:  # root reads everything: serve as another user, as the images do
        unreadable.chmod(0o700)
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
        serving_uid, mode = NOBODY, "drwx------"
    else:
        unreadable.chmod(0o000)
        serving_uid, mode = os.geteuid(), "d---------"
    owner = unreadable.stat().st_uid
    env = {"HOME": str(world_readable_tmp)}
    try:
        with ServerProcess(argv, env=env, log_path=world_readable_tmp / "rampp.log") as server:
            reason = wait_for_failure(server)
    finally:
        unreadable.chmod(0o755)
    assert reason.startswith(f"cannot read {unreadable}: permission denied (owned by uid {owner}, mode {mode})")
    assert f"the service runs as uid {serving_uid}" in reason


def wait_for_failure(server: ServerProcess, timeout: float = 120) -> str:
    def model_state():
        assert server.proc.poll() is None, server.log_tail()
        with grpc.insecure_channel(server.address) as channel:
            return tagger_pb2_grpc.TaggerServiceStub(channel).GetModelInfo(
                tagger_pb2.TaggerServiceGetModelInfoRequest(), timeout=5).state

    state = wait_for(model_state, until=lambda s: s.phase == "failed", timeout=timeout, ignore=(grpc.RpcError,),
                     describe=f"the model to report its failure\n{server.log_tail()}")
    return state.reason
