"""The Grafana dashboard and the Prometheus alert rules, against the real daemon.

promtool checks and unit-tests the rules; every metric either file queries
must be in ``/metrics`` of a running daemon (bar a short, explained list);
every runbook link must land on a section of the operator guide.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import SidecarEnv, span, wait_until, write_spans

from .tools import DEPLOY, tool

RULES = DEPLOY / "prometheus" / "alerts.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "span-sidecar.json"
GUIDE = DEPLOY / "README.md"
PROMTOOL = "Debian package prometheus"

# Queried, but not in a daemon's /metrics today. Keep this list short.
NOT_EXPORTED = {
    # Prometheus itself makes `up` for every scrape target.
    "up",
}
# What the dashboard must show: throughput, lag, breakers, quarantine, memory, files.
MUST_QUERY = {
    "span_sidecar_records_read_total", "span_sidecar_records_shipped_total",
    "span_sidecar_lag_seconds", "span_sidecar_breaker_state",
    "span_sidecar_records_quarantined_total", "span_sidecar_spool_bytes",
    "process_resident_memory_bytes", "process_open_fds",
}
_CLAUSES = re.compile(
    r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"|\b(?:by|without|on|ignoring|group_left|group_right)"
    r"\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w$:.])([a-zA-Z_:][\w:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Label matchers, ranges, strings and grouping clauses are cut first; then
    every identifier not called like a function and not an operator keyword
    is a metric name.
    """
    bare = _CLAUSES.sub(" ", expr)
    return {name for name in _IDENT.findall(bare) if name not in _KEYWORDS}


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # label_values(METRIC{...}, label): the metric only
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1",
                                var["query"]["query"]))
    return exprs


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_metric_names_are_found_in_promql() -> None:
    """The extractor itself: names found, functions, labels and clauses not."""
    expr = ('histogram_quantile(0.95, sum by (le, op) (rate(a_bucket{job="$job", op=~"x"}'
            '[$__rate_interval]))) / on(instance) group_left b_total > bool 3 or vector(0)')
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert metric_names('max by (sink) (span_sidecar_lag_seconds) > 600') == {
        "span_sidecar_lag_seconds"}


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = tool("promtool", PROMTOOL)
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_is_complete_and_uses_one_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "span-sidecar" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    sources = [n["datasource"] for n in walk(dash["panels"]) if "datasource" in n]
    assert sources and all(s == {"type": "prometheus", "uid": "${datasource}"} for s in sources)
    queried = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert queried >= MUST_QUERY, MUST_QUERY - queried


def test_every_runbook_link_lands_on_a_section_of_the_guide() -> None:
    """Absolute (a receiver cannot resolve a relative path), built from the
    one base the rule file names, and each on a section of deploy/README.md."""
    headings = re.findall(r"^#+ (.+)$", GUIDE.read_text(), re.MULTILINE)
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
    rules_text = RULES.read_text()
    declared = re.search(r"^#\s+RUNBOOK_BASE = (\S+)$", rules_text, re.MULTILINE)
    assert declared is not None, "alerts.yaml names its RUNBOOK_BASE"
    base = declared[1]
    assert re.match(r"https://[^/\s]+/", base), base
    groups = yaml.safe_load(rules_text)["groups"]
    links = [r["annotations"]["runbook_url"] for g in groups for r in g["rules"]]
    assert len(links) == sum(len(g["rules"]) for g in groups) >= 5
    links += re.findall(r"https://[^\s\"#]+#[\w-]+", DASHBOARD.read_text())
    assert len(links) >= 10
    assert "README.md#" not in re.sub(r"https://\S+", "", DASHBOARD.read_text())
    for link in links:
        path, _, anchor = link.partition("#")
        assert path == base, f"{link}: not built from {base}"
        assert anchor in anchors, f"{link}: no such section in deploy/README.md"


def test_every_queried_metric_is_exported_by_a_running_daemon(sidecar_env: SidecarEnv) -> None:
    sidecar_env.configure(http={"enabled": True, "listen": "127.0.0.1:0"})
    d = sidecar_env.daemon().wait_started()
    wait_until(lambda: bool(d.events("http.server.started")), 20, "the HTTP server")
    port = int(d.events("http.server.started")[0]["port"])
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(5)])
    wait_until(lambda: sidecar_env.rows() == 5, 20, "the spans to be shipped")

    def exported() -> set[str]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}

    # The histogram has samples once the shipped batch has been timed.
    wait_until(lambda: "span_sidecar_operation_duration_seconds_count" in exported(), 10,
               "the operation histogram")
    names = exported()
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    queried = set().union(*(metric_names(e) for e in rule_exprs() + dashboard_exprs()))
    missing = queried - names - NOT_EXPORTED
    assert not missing, f"queried but not exported: {sorted(missing)}"
