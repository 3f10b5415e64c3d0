"""The dashboard, the alert rules, their unit tests and Prometheus' scrape configuration, from one source.

PANELS and ALERTS below are the source; deploy/generate.py writes from them:

    grafana/archivetag.json          a Grafana dashboard (a Prometheus data source chosen on import)
    prometheus/alerts.yaml           alert rules, each with its runbook anchor in docs/operations.md
    prometheus/alerts.test.yaml      `promtool test rules` input: one test per alert, from its `example`
    prometheus/prometheus.yml        a scrape of every server's metrics port (the compose services' names)

tests/deploy/test_observability.py starts Debian's Prometheus against the smoke stack and runs every
panel's queries through its HTTP API (each must return a series), and runs promtool on the rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

RATE = "5m"
JOB_MATCH = '{job=~"archivetag.*"}'
TAG_IMAGE = '{method="/archivetag.v1.TaggingService/TagImage"}'


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    # What to do when it fires: docs/operations.md, under the alert's name (a test checks each has one).
    # A promtool unit test: input series (name{labels} → 'values' notation), when to evaluate, the labels fired.
    example: tuple[tuple[str, str], ...] = ()
    example_at: str = "15m"
    example_labels: dict[str, str] = field(default_factory=dict)


def quantile(q: float, metric: str, by: str = "", match: str = "") -> str:
    """The q-quantile of a histogram over RATE; match: a label selector such as '{method="..."}'."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{match}[{RATE}])))"


PANELS: tuple[Panel, ...] = (
    Panel("Photos answered per second (box)", ((f"sum(rate(archivetag_client_answered_total[{RATE}]))", "answered"),),
          "ops"),
    Panel("TagImage latency in the orchestrator", (
        (quantile(0.5, "archivetag_request_seconds", match=TAG_IMAGE), "p50"),
        (quantile(0.95, "archivetag_request_seconds", match=TAG_IMAGE), "p95"),
    ), "s"),
    Panel("Share per client (photos answered per second)",
          ((f"sum by (client) (rate(archivetag_client_answered_total[{RATE}]))", "{{client}}"),), "ops",
          "Clients are named by pseudonym when the metrics endpoint is open to the network (deploy/README.md)."),
    Panel("Fair-share queue wait per client (p95)",
          ((quantile(0.95, "archivetag_client_queue_wait_seconds", "client"), "{{client}}"),), "s"),
    Panel("In flight per client", (("sum by (client) (archivetag_client_in_flight)", "{{client}}"),)),
    Panel("Backend calls and waiting", (("sum by (backend) (archivetag_backend_calls)", "{{backend}} calls"),
                                        ("sum by (backend) (archivetag_backend_waiting)", "{{backend}} waiting"))),
    Panel("Backend health (1 = serving) and breaker (1 = open)", (
        ("max by (backend) (archivetag_backend_serving)", "{{backend}} serving"),
        ("max by (backend) (archivetag_backend_breaker_open)", "{{backend}} breaker open"),
    )),
    Panel("Failovers per second", ((f"sum by (primary, fallback) (rate(archivetag_failovers_total[{RATE}]))",
                                    "{{primary}} → {{fallback}}"),), "ops"),
    Panel("Errors answered per second, by reason",
          ((f"sum by (reason) (rate(archivetag_errors_total[{RATE}]))", "{{reason}}"),), "ops",
          "Reasons as docs/errors.md lists them."),
    Panel("Calls by method and status",
          ((f"sum by (method, code) (rate(archivetag_requests_total[{RATE}]))", "{{method}} {{code}}"),), "ops"),
    Panel("Batch size per model (p50)", ((quantile(0.5, "archivetag_batch_size", "model"), "{{model}}"),)),
    Panel("Model queue: depth and wait (p95)", (
        ("sum by (model) (archivetag_queue_depth)", "{{model}} depth"),
        (quantile(0.95, "archivetag_queue_wait_seconds", "model"), "{{model}} wait s"),
    )),
    Panel("Result cache lookups per second, by result",
          ((f"sum by (result) (rate(archivetag_cache_lookups_total[{RATE}]))", "{{result}}"),), "ops"),
    Panel("Result cache hit rate", ((
        f'(sum(rate(archivetag_cache_lookups_total{{result="hit"}}[{RATE}])) or vector(0)) / '
        f"clamp_min(sum(rate(archivetag_cache_lookups_total[{RATE}])), 1e-9)", "hit rate"),), "percentunit"),
    Panel("Decode and inference time (p95)", (
        (quantile(0.95, "archivetag_decode_seconds", "job, step"), "{{job}} decode {{step}}"),
        (quantile(0.95, "archivetag_inference_seconds", "model"), "{{model}} inference"),
    ), "s"),
    Panel("Models serving (1 = SERVING)", (("max by (model) (archivetag_model_serving)", "{{model}}"),)),
    Panel("Process memory (RSS)", ((f"process_resident_memory_bytes{JOB_MATCH}", "{{job}}"),), "bytes"),
    Panel("CPU seconds per second", ((f"rate(process_cpu_seconds_total{JOB_MATCH}[{RATE}])", "{{job}}"),)),
)


ALERTS: tuple[Alert, ...] = (
    Alert("ArchivetagBackendNotServing", "max by (backend) (archivetag_backend_serving) == 0", "2m", "critical",
          "{{ $labels.backend }}: no replica is SERVING, as the orchestrator sees it",
          (('archivetag_backend_serving{backend="florence"}', "1 1 0x20"),), "10m", {"backend": "florence"}),
    Alert("ArchivetagBreakerOpen", "max by (backend) (archivetag_backend_breaker_open) == 1", "1m", "warning",
          "{{ $labels.backend }}: circuit breaker open (it failed repeatedly)",
          (('archivetag_backend_breaker_open{backend="florence"}', "0 1x20"),), "5m", {"backend": "florence"}),
    Alert("ArchivetagFailoverRateHigh",
          f"sum(rate(archivetag_failovers_total[10m])) / clamp_min(sum(rate(archivetag_client_answered_total[10m])), "
          "1e-9) > 0.2", "10m", "warning", "More than 20% of photos are answered by the fallback tagger",
          (('archivetag_failovers_total{primary="florence",fallback="rampp"}', "0+30x40"),
           ('archivetag_client_answered_total{client="desk",lane="bulk"}', "0+60x40")), "30m", {}),
    Alert("ArchivetagClientQueueWaitHigh", quantile(0.95, "archivetag_client_queue_wait_seconds", "client") + " > 30",
          "10m", "warning", "{{ $labels.client }}: photos wait over 30 s (p95) for a processing slot",
          (('archivetag_client_queue_wait_seconds_bucket{client="desk",lane="bulk",le="30"}', "0x40"),
           ('archivetag_client_queue_wait_seconds_bucket{client="desk",lane="bulk",le="60"}', "0+10x40"),
           ('archivetag_client_queue_wait_seconds_bucket{client="desk",lane="bulk",le="+Inf"}', "0+10x40")),
          "30m", {"client": "desk"}),
    Alert("ArchivetagCacheErrors", "sum(rate(archivetag_cache_errors_total[10m])) > 0", "10m", "warning",
          "The result cache fails to read or write",
          (('archivetag_cache_errors_total{operation="read"}', "0+5x40"),), "30m", {}),
    Alert("ArchivetagServiceRestarting", f"changes(process_start_time_seconds{JOB_MATCH}[30m]) > 2", "0m", "critical",
          "{{ $labels.job }} restarted more than twice in 30 minutes",
          (('process_start_time_seconds{job="archivetag-rampp",instance="rampp:9153"}', "1 1 60 60 120 120 180 180"),),
          "7m", {"job": "archivetag-rampp", "instance": "rampp:9153"}),
)


def dashboard() -> str:
    panels = []
    for index, panel in enumerate(PANELS):
        panels.append({
            "id": index + 1, "type": "timeseries", "title": panel.title, "description": panel.description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
            "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for n, (expr, legend) in enumerate(panel.queries)],
        })
    board = {
        "title": "archivetag", "uid": "archivetag", "schemaVersion": 39, "version": 1, "editable": True,
        "tags": ["archivetag"], "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "description": "Generated by deploy/generate.py from deploy/observability.py; edit that, not this file.",
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def _yaml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def runbook_link(alert: Alert) -> str:
    return "docs/operations.md#" + alert.name.lower()


def alert_rules() -> str:
    lines = ["# Generated by deploy/generate.py from deploy/observability.py; edit that, not this file.",
             "groups:", "  - name: archivetag", "    rules:"]
    for alert in ALERTS:
        lines += [f"      - alert: {alert.name}", f"        expr: {_yaml_string(alert.expr)}",
                  f"        for: {alert.for_}", "        labels:", f"          severity: {alert.severity}",
                  "        annotations:", f"          summary: {_yaml_string(alert.summary)}",
                  f"          runbook: {_yaml_string(runbook_link(alert))}"]
    return "\n".join(lines) + "\n"


def alert_tests() -> str:
    lines = ["# Generated by deploy/generate.py from deploy/observability.py: one test per alert.",
             "rule_files:", "  - alerts.yaml", "evaluation_interval: 1m", "tests:"]
    for alert in ALERTS:
        lines += ["  - interval: 1m", "    input_series:"]
        for series, values in alert.example:
            lines += [f"      - series: {_yaml_string(series)}", f"        values: {_yaml_string(values)}"]
        lines += ["    alert_rule_test:", f"      - eval_time: {alert.example_at}", f"        alertname: {alert.name}",
                  "        exp_alerts:", "          - exp_labels:", f"              severity: {alert.severity}"]
        lines += [f"              {key}: {_yaml_string(value)}" for key, value in alert.example_labels.items()]
        summary = alert.summary
        for key, value in alert.example_labels.items():
            summary = summary.replace("{{ $labels.%s }}" % key, value)
        lines += ["            exp_annotations:", f"              summary: {_yaml_string(summary)}",
                  f"              runbook: {_yaml_string(runbook_link(alert))}"]
    return "\n".join(lines) + "\n"


def prometheus_config(servers) -> str:
    """A scrape of every server's replicas, by its compose service name and metrics port."""
    lines = ["# Generated by deploy/generate.py from the servers' specs; edit that, not this file.",
             "global:", "  scrape_interval: 15s", "  evaluation_interval: 1m", "rule_files:", "  - alerts.yaml",
             "scrape_configs:"]
    for spec in servers:  # every replica: compose's DNS answers a service name with each container's address
        lines += [f"  - job_name: archivetag-{spec.name}", "    dns_sd_configs:",
                  f"      - names: [{_yaml_string(spec.name)}]", "        type: A", f"        port: {spec.metrics_port}",
                  "        refresh_interval: 15s"]
    return "\n".join(lines) + "\n"
