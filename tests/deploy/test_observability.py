"""The dashboard and the alert rules against a real Prometheus (Debian's, installed by scripts/bootstrap):
every panel's query returns a series from the running smoke stack, and promtool passes the rules and their
unit tests (issue 29, items 2 and 3)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from archivetag.v1 import tagging_pb2, tagging_pb2_grpc
from tests.conftest import model_service, orchestrator
from tests.support.image_corpus import encode, photo
from tests.support.servers import free_port
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "archivetag.json"
TOKEN = "desk-token-0123456789abcdef"


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/bootstrap as root, or `apt-get install prometheus`")
    return found


def query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
    except urllib.error.HTTPError as exc:  # a query Prometheus cannot parse: no waiting will mend it
        raise AssertionError(f"{expr}: {exc.read().decode()}") from None
    assert body["status"] == "success", body
    return body["data"]["result"]


def panel_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


def test_promtool_accepts_the_rules_and_every_alert_fires_in_its_unit_test():
    promtool = binary("promtool")
    check = subprocess.run([promtool, "check", "rules", "alerts.yaml"], cwd=PROMETHEUS_DIR, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([promtool, "test", "rules", "alerts.test.yaml"], cwd=PROMETHEUS_DIR,
                           capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    rules = (PROMETHEUS_DIR / "alerts.yaml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    tested = (PROMETHEUS_DIR / "alerts.test.yaml").read_text()
    assert alerts and all(f"alertname: {name}" in tested for name in alerts)


def test_every_alert_has_its_runbook_in_the_operations_doc():
    rules = (PROMETHEUS_DIR / "alerts.yaml").read_text()
    doc = (REPO / "docs" / "operations.md").read_text()
    names = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    missing = [name for name in names if f"### {name}" not in doc]
    assert not missing, f"docs/operations.md has no runbook for {missing}"


def test_every_dashboard_panel_returns_a_series_from_the_running_stack(smoke_models, tmp_path):
    """RAM++ and SigLIP serve; Florence-2's target listens nowhere, so every photo fails over (a failover, a
    backend not serving) and one bad file gives an error reason."""
    prometheus = binary("prometheus")
    ports = {name: free_port() for name in ("rampp", "siglip", "orchestrator", "prometheus")}
    rampp = model_service("rampp", smoke_models, tmp_path, metrics_port=ports["rampp"]).start()
    siglip = model_service("siglip", smoke_models, tmp_path, metrics_port=ports["siglip"]).start()
    started = [rampp, siglip]
    try:
        rampp.wait_status("archivetag.v1.TaggerService", "SERVING", timeout=180)
        siglip.wait_status("archivetag.v1.ViewTypeService", "SERVING", timeout=180)
        args = ("--api-tokens", f"desk:{TOKEN}", "--florence-target", f"127.0.0.1:{free_port()}",
                "--rampp-target", rampp.address, "--siglip-target", siglip.address)
        front = orchestrator(tmp_path, *args, metrics_port=ports["orchestrator"]).start()
        started.append(front)
        front.wait_status("archivetag.v1.TaggingService", "SERVING", timeout=60)
        api = tagging_pb2_grpc.TaggingServiceStub(grpc.insecure_channel(front.address))
        auth = (("authorization", f"Bearer {TOKEN}"),)
        for seed in range(6):
            request = tagging_pb2.TagImageRequest()
            request.image.data = encode(photo(80 + seed, 60), "PNG")
            assert api.TagImage(request, metadata=auth, timeout=60).tagger == "rampp"
        bad = tagging_pb2.TagImageRequest()
        bad.image.data = b"not an image at all"
        with pytest.raises(grpc.RpcError):
            api.TagImage(bad, metadata=auth, timeout=60)

        config = tmp_path / "prometheus.yml"
        scrape = "\n".join(f"  - job_name: archivetag-{name}\n    static_configs:\n"
                           f"      - targets: ['127.0.0.1:{ports[name]}']" for name in ("rampp", "siglip", "orchestrator"))
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape}\n")
        argv = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}"]
        with open(tmp_path / "prometheus.log", "wb") as log:
            server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            queries = panel_queries()

            def empty() -> list[str]:
                # Keep traffic flowing so rates over the window see at least two samples that differ.
                request = tagging_pb2.TagImageRequest()
                request.image.data = encode(photo(70, 50), "PNG")
                api.TagImage(request, metadata=auth, timeout=60)
                return [f"{title}: {expr}" for title, expr in queries if not query(ports["prometheus"], expr)]

            wait_for(empty, lambda missing: not missing, timeout=120, interval=1.0, ignore=(OSError,),
                     describe="a series for every dashboard query (the ones without are listed)")
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        for process in reversed(started):
            process.terminate()
