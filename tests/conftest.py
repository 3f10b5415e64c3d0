"""Fixtures shared by the cross-service tests: smoke models (real architectures, tiny, random
weights) built once per session, and real servers on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from archivetag.stack import archivetag_command
from tests.support.servers import ServerProcess

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda are skipped on machines without a CUDA device (torch imported only if one is collected)."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (benchmarks/gpu_check.sh runs these on one)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def smoke_models(tmp_path_factory) -> Path:
    """A models directory with smoke Florence-2, RAM++ and SigLIP models."""
    from archivetag.models import write_smoke_models

    models = tmp_path_factory.mktemp("models")
    write_smoke_models(models)
    return models


def model_service(name: str, models: Path, log_dir: Path, *args: str, port: int | None = None,
                  metrics_port: int = 0, env: dict[str, str] | None = None) -> ServerProcess:
    """`archivetag serve <name>` on a free loopback port (not started); env: added to the environment."""
    argv = archivetag_command("serve", name, "--models", str(models), "--stall-seconds", "60", *args)
    return ServerProcess(argv, port=port, log_path=log_dir / f"{name}-{port or 'auto'}.log", metrics_port=metrics_port,
                         env=env)


def orchestrator(log_dir: Path, *args: str, name: str = "orchestrator", metrics_port: int = 0,
                 env: dict[str, str] | None = None) -> ServerProcess:
    """`archivetag serve orchestrator` with its result cache in log_dir, not the user's (args may override)."""
    argv = archivetag_command("serve", "orchestrator", "--cache-path", str(log_dir / f"{name}-cache.sqlite"), *args)
    return ServerProcess(argv, log_path=log_dir / f"{name}.log", metrics_port=metrics_port, env=env)
