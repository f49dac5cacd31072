"""monitoring/: alert rules checked and unit-tested by promtool, the
dashboard and the README checked against the exporter's metric catalog."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rsttrace.analysis.vocab import CAUSES
from rsttrace.exporter.catalog import METRICS, series_names

MON = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MON / "rsttrace.rules.yml"
DASH = MON / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: scripts/install.sh installs Debian's prometheus")

METRIC_RE = re.compile(r"\brsttrace_[a-z_]+\b")


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def dashboard_exprs() -> list[str]:
    d = json.loads(DASH.read_text())
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    out += [v["query"]["query"] for v in d["templating"]["list"] if isinstance(v.get("query"), dict)]
    return out


@needs_promtool
def test_promtool_checks_the_rules():
    p = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(rules())} rules found" in p.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass():
    p = subprocess.run([PROMTOOL, "test", "rules", "rsttrace.rules.test.yml"], cwd=MON,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path):
    # the same tests against rules whose thresholds are off must fail
    broken = RULES.read_text().replace("> 0.80", "> 0.90").replace("increase(rsttrace_events_lost_total[5m]) > 0",
                                                                   "increase(rsttrace_events_lost_total[5m]) > 10")
    (tmp_path / "rsttrace.rules.yml").write_text(broken)
    shutil.copy(MON / "rsttrace.rules.test.yml", tmp_path)
    p = subprocess.run([PROMTOOL, "test", "rules", "rsttrace.rules.test.yml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "RsttraceConntrackTableFilling" in p.stdout + p.stderr
    assert "RsttraceEventsLost" in p.stdout + p.stderr


def test_every_alert_has_a_unit_test_and_a_severity():
    tests = (MON / "rsttrace.rules.test.yml").read_text()
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 10
    for r in alerts:
        assert f"alertname: {r['alert']}" in tests, r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["description"]


def test_required_alerts_exist():
    exprs = {r["alert"]: r["expr"] for r in rules() if "alert" in r}
    rec = {r["record"]: r["expr"] for r in rules() if "record" in r}
    usage = rec["rsttrace:conntrack_usage:ratio"]
    assert "rsttrace_conntrack_entries" in usage and "rsttrace_conntrack_entries_limit" in usage
    assert exprs["RsttraceConntrackTableFilling"].endswith("> 0.80")
    assert exprs["RsttraceConntrackTableNearlyFull"].endswith("> 0.95")
    assert "rsttrace_conntrack_drop_total" in exprs["RsttraceConntrackDrops"]
    assert "rsttrace_reset_incidents_total" in exprs["RsttraceNodeCausedResets"]
    assert "rsttrace_events_lost_total" in exprs["RsttraceEventsLost"]
    assert "rsttrace_ipvs_timeout_seconds" in exprs["RsttraceConntrackTimeoutBelowIpvs"]
    assert "rsttrace_tcp_keepalive_time_seconds" in exprs["RsttraceKeepaliveNotBelowIdleTimeout"]


def test_every_aggregation_and_match_keeps_the_node_label():
    # the node label says where to look; a `by (...)` or `on (...)` that
    # leaves it out loses it from the alert
    for r in rules():
        if r.get("record", "").startswith("rsttrace:fleet_"):
            continue        # the fleet's view sums across nodes on purpose
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", r["expr"]):
            assert "node" in [c.strip() for c in clause.split(",")], (r.get("alert") or r.get("record"), clause)
        if "alert" in r:
            assert "{{ $labels.node }}" in r["annotations"]["summary"], r["alert"]


def test_rules_and_dashboard_use_only_exported_metrics():
    known = series_names() | recorded()
    used = set()
    for r in rules():
        used |= set(METRIC_RE.findall(r["expr"]))
    for e in dashboard_exprs():
        used |= set(METRIC_RE.findall(e))
    assert used - known == set()
    # and the dashboard shows the headline metrics
    dash = " ".join(dashboard_exprs())
    for name in ("rsttrace_reset_incidents_total", "rsttrace_resets_total", "rsttrace_conntrack_entries",
                 "rsttrace_conntrack_drop_total", "rsttrace_tcp_state_transitions_total",
                 "rsttrace_tcp_keepalive_time_seconds", "rsttrace_events_lost_total"):
        assert name in dash, name


def test_dashboard_is_importable_grafana_json():
    d = json.loads(DASH.read_text())
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance", "netns"} <= names
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_readme_documents_every_metric():
    text = (MON / "README.md").read_text()
    for m in METRICS:
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{m.name}` |")), None)
        assert row is not None, m.name
        assert f"| {m.type} |" in row and all(lab in row for lab in m.labels)
    for r in rules():
        if "alert" in r:
            assert r["alert"] in text


# a cause in a label matcher (cause="x", cause=~"x|y") or a label set
# (cause: x) of the rules, their tests and the dashboard
CAUSE_RE = re.compile(r"""\bcause\s*(?:=~?|!~?)\s*\\?["']([^"'\\]+)|[{,]\s*cause:\s*([a-z_]+)""")


def causes_named(text: str) -> set[str]:
    out: set[str] = set()
    for m in CAUSE_RE.finditer(text):
        out |= set((m.group(1) or m.group(2)).split("|"))
    return out


def test_rules_and_dashboard_name_only_causes_the_classifier_has():
    texts = {p.name: p.read_text() for p in (RULES, MON / "rsttrace.rules.test.yml", DASH)}
    named = {name: causes_named(t) for name, t in texts.items()}
    # the matcher finds what is there (the node-caused alert, the alert tests)
    assert {"conntrack_full", "keepalive"} <= named[RULES.name]
    assert "no_listener" in named["rsttrace.rules.test.yml"]
    for name, causes in named.items():
        assert causes <= set(CAUSES), (name, causes - set(CAUSES))


def test_readme_lists_every_cause():
    text = (MON / "README.md").read_text()
    line = next(ln for ln in text.split("\n- ") if ln.startswith("`cause`:"))
    assert re.findall(r"`([a-z_]+)`", line.split("(", 1)[0])[1:] == list(CAUSES)


def test_dashboard_and_readme_know_every_cause():
    d = json.loads(DASH.read_text())
    for p in d["panels"]:
        if p.get("targets") and "rsttrace_reset_incidents_total" in p["targets"][0]["expr"] and "cause" in p["targets"][0]["expr"]:
            named = {o["matcher"]["options"] for o in p["fieldConfig"]["overrides"]}
            assert named == set(CAUSES), p["title"]
    text = (MON / "README.md").read_text()
    assert all(f"`{c}`" in text for c in CAUSES)
