"""Helpers shared by the benchmark scripts (imported as `timing`: scripts run from this folder)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of fn over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    """p50/p95/p99 of latencies in seconds, in milliseconds."""
    import numpy as np

    values = np.array(latencies) * 1000
    return {f"p{p}_ms": float(np.percentile(values, p)) for p in (50, 95, 99)}


def write_results(out: Path, results: dict, plot: Callable[[dict, Path], None] | None = None) -> None:
    """Write the JSON results (and, given a plot function, a PNG beside them); say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    written = [out]
    if plot is not None:
        plot(results, out.with_suffix(".png"))
        written.append(out.with_suffix(".png"))
    print("wrote " + " and ".join(map(str, written)))


def models_or_smoke(given: Path | None, scratch: Path) -> Path:
    """The models directory a benchmark was given, else fresh smoke models under scratch."""
    if given is not None:
        return given
    from archivetag.models import write_smoke_models

    write_smoke_models(scratch / "models")
    return scratch / "models"


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (stable on a shared machine, unlike wall time)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (VmHWM), in MiB."""
    import re

    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def scrape_metrics(port: int) -> dict[str, float]:
    """A server's Prometheus metrics on 127.0.0.1:port, as {name{label=value,...}: value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    """The sum of a metric's samples over all their labels."""
    return sum(v for k, v in metrics.items() if k.startswith(name + "{"))
