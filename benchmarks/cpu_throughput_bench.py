"""Photos per hour on this machine's CPU, through the whole stack at full size: the number a CPU-only archive asks.

    python benchmarks/cpu_throughput_bench.py [--photos 50] [--runs before,after,rampp] [--workdir DIR]

Full-size architectures with random weights (Florence-2-base, every caption 64 tokens long; RAM++ Swin-L/384;
SigLIP-B/16), `archivetag up` on this machine, then `archivetag tag --json` of --photos camera-size JPEGs made from
the shipped sample photos (distinct bytes) at tag's default concurrency, with the result cache off. Runs, one after
the other in one process (each a fresh stack; a run named twice is run twice, and its median printed):
  before  the defaults before the CPU profile: float32 everywhere, 3 beams, ONNX Runtime's spinning threads
          (ARCHIVETAG_DTYPE=float32, ARCHIVETAG_SIGLIP_PRECISION=fp32, ARCHIVETAG_FLORENCE_NUM_BEAMS=3,
          ARCHIVETAG_SIGLIP_ORT_SPINNING=true)
  after   today's defaults (on a CPU: Florence-2 int8 with greedy search, RAM++ bfloat16 or int8, SigLIP int8 on
          sleeping threads: docs/models/cpu.md)
  rampp   today's defaults with RAM++ as the only tagger (ARCHIVETAG_TAGGERS=rampp)
  NAME:VAR=VALUE[+VAR=VALUE...]  any other run, e.g. siglip1:ARCHIVETAG_SIGLIP_ORT_THREADS=1
Per run: photos per hour (photos / wall time of `tag`), which tagger answered how many, the fallbacks, each
service's seconds per photo in decode, queue wait and inference (its own metrics), CPU seconds per photo and
peak RSS (VmHWM) per service. Prints a table; writes benchmarks/results/cpu_throughput.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image
from timing import metric_sum, peak_rss_mib, process_cpu_seconds, scrape_metrics  # benchmarks/timing.py, beside this

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cpu_throughput.json"
SAMPLES = REPO / "src" / "archivetag" / "samples"
RUNS = {
    "before": {"ARCHIVETAG_DTYPE": "float32", "ARCHIVETAG_SIGLIP_PRECISION": "fp32",
               "ARCHIVETAG_FLORENCE_NUM_BEAMS": "3", "ARCHIVETAG_SIGLIP_ORT_SPINNING": "true"},
    "after": {},
    "rampp": {"ARCHIVETAG_TAGGERS": "rampp"},
}
PORTS = {"orchestrator": 50151, "florence": 50152, "rampp": 50153, "siglip": 50154}
METRICS = {"orchestrator": 9250, "florence": 9252, "rampp": 9253, "siglip": 9254}


def say(text: str) -> None:
    print(f"cpu_throughput: {text}", file=sys.stderr, flush=True)


def build_models(models: Path) -> None:
    """The three full-size random models, each built once (kept in --workdir between runs of this script)."""
    from archivetag_florence.smoke import write_full_size_model as florence
    from archivetag_rampp.smoke import write_full_size_model as rampp
    from archivetag_siglip.smoke import write_full_size_model as siglip

    for name, write in (("florence", lambda t: florence(t, "base", min_new_tokens=64)), ("rampp", rampp),
                        ("siglip", lambda t: siglip(t, int8=True))):  # as `models pull` exports it
        if not (models / name / "archivetag-model.json").exists():
            started = time.monotonic()
            write(models / name)
            say(f"built full-size {name} in {time.monotonic() - started:.0f} s")


def camera_photos(folder: Path, count: int) -> list[Path]:
    """`count` distinct 12-megapixel JPEGs: crops of the sample photos at several offsets, scaled up."""
    from archivetag.runtime.images import decode_image

    folder.mkdir(parents=True, exist_ok=True)
    samples = [decode_image(p.read_bytes()).convert("RGB") for p in sorted(SAMPLES.iterdir()) if p.suffix != ".md"]
    paths = []
    for i in range(count):
        image = samples[i % len(samples)]
        w, h = image.size
        shift = (i // len(samples)) * 0.02
        crop = image.crop((int(w * shift), int(h * shift), int(w * (0.8 + shift)), int(h * (0.8 + shift))))
        buffer = io.BytesIO()
        crop.resize((4000, 3000), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
        path = folder / f"photo-{i:03d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def wait_serving(log_dir: Path, up: subprocess.Popen, timeout: float = 1200) -> None:
    """Every model service loaded and warmed up, and the orchestrator ready: a model still loading would take
    CPU from the measured run."""
    from archivetag.runtime import registry
    from archivetag.runtime.health_client import check_address

    services = {PORTS["orchestrator"]: "archivetag.v1.TaggingService",
                **{PORTS[spec.name]: spec.health_service for spec in registry.models()}}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise RuntimeError(f"`archivetag up` exited with {up.returncode}; see {log_dir}")
        if all(check_address(f"127.0.0.1:{port}", name)[0] == "SERVING" for port, name in services.items()):
            return
        time.sleep(2)
    raise TimeoutError(f"the stack was not SERVING within {timeout:.0f} s; see {log_dir}")


def run_stack(name: str, env_changes: dict[str, str], models: Path, photos: list[Path], workdir: Path) -> dict:
    log_dir = workdir / "logs" / name
    env = {**os.environ, "ARCHIVETAG_CACHE": "off", **env_changes}
    argv = [sys.executable, "-m", "archivetag", "up", "--models", str(models), "--log-dir", str(log_dir)]
    for service, port in PORTS.items():
        argv += [f"--{service}-port", str(port), f"--{service}-metrics-port", str(METRICS[service])]
    say(f"{name}: starting the stack ({' '.join(f'{k}={v}' for k, v in env_changes.items()) or 'defaults'})")
    up = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        started = time.monotonic()
        wait_serving(log_dir, up)
        say(f"{name}: SERVING after {time.monotonic() - started:.0f} s; tagging {len(photos)} photos")
        pids = {s: int((log_dir / f"{s}.pid").read_text()) for s in PORTS}
        before = {s: process_cpu_seconds(pid) for s, pid in pids.items()}
        metrics_before = {s: scrape_metrics(port) for s, port in METRICS.items()}
        started = time.monotonic()
        tagged = subprocess.run([sys.executable, "-m", "archivetag", "tag", "--json", "--no-progress",
                                 "--target", f"127.0.0.1:{PORTS['orchestrator']}", *map(str, photos)],
                                env=env, capture_output=True, text=True, timeout=7200)
        wall = time.monotonic() - started
        if tagged.returncode != 0:
            raise RuntimeError(f"`archivetag tag` failed ({tagged.returncode}): {tagged.stderr[-2000:]}")
        lines = [json.loads(line) for line in tagged.stdout.splitlines() if line.startswith("{")]
        answers = [line["result"] for line in lines if "result" in line]  # the failed ones have "error"
        after = {s: process_cpu_seconds(pid) for s, pid in pids.items()}
        peaks = {s: peak_rss_mib(pid) for s, pid in pids.items()}
        metrics = {s: scrape_metrics(port) for s, port in METRICS.items()}
    finally:
        up.terminate()
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, 9)
    photos_n = len(answers)
    if photos_n < len(photos):
        say(f"{name}: {len(photos) - photos_n} photos failed: {[line.get('error') for line in lines][:3]}")
    services = {}
    for s in PORTS:
        delta = {k: metrics[s].get(k, 0.0) - metrics_before[s].get(k, 0.0) for k in metrics[s]}
        row = {"cpu_s_per_photo": (after[s] - before[s]) / max(photos_n, 1), "peak_rss_mib": peaks[s]}
        if s != "orchestrator":
            items = metric_sum(delta, "archivetag_batch_size_sum")  # photos inferred (the sum of batch sizes)
            row.update({
                "items": items,
                "decode_s_per_item": metric_sum(delta, "archivetag_decode_seconds_sum") / max(items, 1),
                "queue_wait_s_per_item": metric_sum(delta, "archivetag_queue_wait_seconds_sum") / max(items, 1),
                "inference_s_per_item": metric_sum(delta, "archivetag_inference_seconds_sum") / max(items, 1),
            })
        else:
            row["breaker_opened"] = metric_sum(metrics[s], "archivetag_backend_breaker_open")
        services[s] = row
    taggers = Counter(a.get("tagger", "") for a in answers)
    fallbacks = Counter(a.get("fallbackReason", "") for a in answers if a.get("fallbackReason"))
    result = {"run": name, "env": env_changes, "photos": photos_n, "wall_s": wall,
              "photos_per_hour": photos_n / wall * 3600, "answered_by": dict(taggers), "fallbacks": dict(fallbacks),
              "models": sorted({f"{m['family']}:{m.get('dtype', '')}" for a in answers for m in a.get("models", [])}),
              "services": services}
    say(f"{name}: {json.dumps(result)}")
    return result


def table(results: list[dict]) -> str:
    lines = ["| run | photos/h | answered by | fallbacks | Florence-2 s/photo (decode / wait / inference) | "
             "RAM++ s/photo | SigLIP s/photo | CPU s/photo (orch / florence / rampp / siglip) | peak RSS MiB (same order) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["services"]

        def stages(name: str) -> str:
            x = s[name]
            return (f"{x['decode_s_per_item']:.2f} / {x['queue_wait_s_per_item']:.2f} / {x['inference_s_per_item']:.2f}"
                    if x.get("items") else "-")

        cpu = " / ".join(f"{s[n]['cpu_s_per_photo']:.2f}" for n in PORTS)
        rss = " / ".join(f"{s[n]['peak_rss_mib']:.0f}" for n in PORTS)
        lines.append(f"| {r['run']} | {r['photos_per_hour']:.0f} | {r['answered_by']} | {sum(r['fallbacks'].values())} | "
                     f"{stages('florence')} | {stages('rampp')} | {stages('siglip')} | {cpu} | {rss} |")
    return "\n".join(lines)


def parse_run(text: str) -> tuple[str, dict[str, str]]:
    if text in RUNS:
        return text, RUNS[text]
    name, _, assignments = text.partition(":")
    return name, dict(a.split("=", 1) for a in assignments.split(",") if a)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--runs", default="before,after,rampp", help="comma-separated: before, after, rampp, or "
                        "NAME:VAR=VALUE (several VAR=VALUE joined with '+')")
    parser.add_argument("--workdir", type=Path, help="keep the models here between runs (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="archivetag-cpu-throughput-") as tmp:
        workdir = args.workdir or Path(tmp)
        build_models(workdir / "models")
        photos = camera_photos(Path(tmp) / "photos", args.photos)
        results = []
        for text in args.runs.split(","):
            name, env_changes = parse_run(text.replace("+", ","))
            results.append(run_stack(name, env_changes, workdir / "models", photos, Path(tmp)))
    print(f"\nThe whole stack on this machine's CPU ({os.cpu_count()} cores), full-size random weights, "
          f"{args.photos} photos of 12 MP, `archivetag tag` at its default concurrency, result cache off\n")
    print(table(results))
    rates: dict[str, list[float]] = {}
    for r in results:
        rates.setdefault(r["run"], []).append(r["photos_per_hour"])
    # This machine is shared: a run alone moved by up to 25% (739 to 980 photos an hour); repeat runs to see it.
    for name, values in rates.items():
        if len(values) > 1:
            print(f"{name}: median {statistics.median(values):.0f} photos/h of {', '.join(f'{v:.0f}' for v in values)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cores": os.cpu_count(), "photos": args.photos, "runs": results}, indent=2))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
