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
    check_dry_run_result(json.loads(out.read_text()), run.stdout)


def check_dry_run_result(result: dict, stdout: str) -> None:
    """Every figure of the GPU check's JSON is there (issue 28, item 4), at the dry run's sizes."""
    assert result["dry_run"] is True
    assert result["failures"] == []
    assert [s["stage"] for s in result["stages"]] == ["install", "environment", "cuda_tests", "measure"]
    assert all(s["status"] == "ok" for s in result["stages"]), result["stages"]
    assert set(result["models"]) == {"siglip", "rampp", "florence-base", "florence-large"}
    for label, model in result["models"].items():
        expected = [(1, None), (2, None)] if not label.startswith("florence") else [(1, 1), (2, 1), (1, 2), (2, 2)]
        assert [(row["batch"], row.get("beams")) for row in model["runs"]] == expected, label
        assert all(row["images_per_second"] > 0 for row in model["runs"]), label
    assert "torch" in result["models"]["siglip"]["settings"]["runtime"]  # the torch runtime's code, on the CPU
    jpeg = result["siglip_jpeg"]
    assert [row["batch"] for row in jpeg["cpu_decode"]] == [row["batch"] for row in jpeg["device_decode"]] == [1, 2]
    assert result["decode"]["cpu_images_per_second"] > 0
    assert result["decode"]["torch_cpu_images_per_second"] > 0  # the nvJPEG path's code, on torchvision's CPU decoder
    assert set(result["stack"]["clients"]) == {"2", "4"}
    assert all(row["requests"] == int(c) * 4 and row["p99_ms"] > 0 for c, row in result["stack"]["clients"].items())
    assert set(result["stack"]["gpu_memory_mib"]) == {"orchestrator", "florence", "rampp", "siglip"}
    assert "GPU check on cpu" in stdout
