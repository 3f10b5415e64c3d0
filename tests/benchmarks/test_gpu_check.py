"""The GPU check's dry mode: the script a CUDA machine runs keeps working on every CPU (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1800)  # a minute or two alone; several on a machine shared by many builds
def test_the_gpu_check_runs_its_measurements_on_cpu_in_dry_mode_and_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=1700, cwd=REPO,
        env={**os.environ, "ARCHIVETAG_GPU_PYTHON": sys.executable},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True
    assert set(result["models"]) == {"siglip", "rampp", "florence-base", "florence-large"}
    for label, model in result["models"].items():
        assert [row["batch"] for row in model["runs"]] == [1, 2], label
        assert all(row["images_per_second"] > 0 for row in model["runs"]), label
    assert result["decode"]["cpu_images_per_second"] > 0
    assert result["decode"]["torch_cpu_images_per_second"] > 0  # the nvJPEG path's code, on torchvision's CPU decoder
    assert result["stack"]["requests"] == 32
    assert set(result["stack"]["gpu_memory_mib"]) == {"orchestrator", "florence", "rampp", "siglip"}
    assert "GPU check on cpu" in run.stdout
