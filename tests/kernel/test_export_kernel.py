"""The exporter on the real kernel: real resets in throwaway namespaces
(prefix rtexp-), scraped over HTTP, and an end-to-end run where a real
Prometheus server on loopback scrapes `rsttrace export` and a PromQL query
returns the resets by cause."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"

@pytest.fixture
def lab(netns):
    """The tracer tier's namespace helper, under this module's own prefix."""
    netns.tag = "rtexp-" + uuid.uuid4().hex[:6]
    return netns


def refused_connects(lab, n: int) -> str:
    ns = lab.add("ref")
    assert lab.refuse(ns, n) == n
    return ns


def conntrack_expiry(lab, pause: float = 3.0) -> tuple[str, str]:
    """The tracer tier's DNAT router whose conntrack forgets an idle flow
    (tests/kernel/conftest.py); returns the (client, router) namespaces."""
    out = lab.conntrack_expiry(pause)
    assert "ConnectionResetError" in out["err"], out
    return out["cli"], out["lb"]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(name, labels but node): value}; every series names this host as
    its node (checked)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            labels = dict(s.labels)
            assert labels.pop("node") == socket.gethostname(), s
            out[(s.name, tuple(sorted(labels.items())))] = s.value
    return out


def resets_of(samples: dict, prefix: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for (name, labels), v in samples.items():
        d = dict(labels)
        if name == "rsttrace_resets_total" and d["netns"].startswith(prefix):
            out[(d["cause"], d["direction"], d["netns"])] = v
    return out


def wait_until(fn, timeout: float, step: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last[0]:
            return last[1]
        time.sleep(step)
    return last[1] if last else None


class Running:
    """An in-process exporter on a live session, stepped by a thread."""

    def __init__(self):
        from rsttrace.exporter.server import Exporter, live_resolver
        from rsttrace.tracer.session import TraceSession
        self.exporter = Exporter(TraceSession(ctx_period_s=0.5), ("127.0.0.1", 0),
                                 resolver=live_resolver)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.exporter.step(0.1)

    def __enter__(self):
        self.exporter.start()
        self._thread.start()
        return self.exporter

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        self.exporter.stop()


def test_live_exporter_counts_real_resets_by_cause_and_namespace(lab):
    with Running() as ex:
        before = scrape(ex.url)
        syn_close = ("rsttrace_tcp_state_transitions_total", (("new_state", "CLOSE"), ("old_state", "SYN_SENT")))
        ref = refused_connects(lab, 3)
        cli, lb = conntrack_expiry(lab)
        want = {("no_listener", "sent", ref): 3, ("no_listener", "recv", ref): 3,
                ("keepalive", "sent", lb): 1, ("keepalive", "recv", cli): 1}
        got = wait_until(lambda: (lambda r: (r == want, r))(resets_of(scrape(ex.url), lab.tag)), timeout=15)
        assert got == want
        after = scrape(ex.url)
    # the kernel's own transition counts, read from the per-CPU array
    assert after[syn_close] - before.get(syn_close, 0) >= 3
    # the router's conntrack and timeouts, labelled with its name
    lbl = (("netns", lb),)
    assert after[("rsttrace_conntrack_tcp_timeout_established_seconds", lbl)] == 2
    assert ("rsttrace_conntrack_entries", lbl) in after
    assert after[("rsttrace_conntrack_entries_limit", lbl)] > 0
    # a new namespace starts with the kernel's default keepalive, not the host's
    assert after[("rsttrace_tcp_keepalive_time_seconds", lbl)] == 7200
    assert after[("rsttrace_hook_available", (("signal", "reset_sent"),))] == 1
    assert after[("rsttrace_events_lost_total", ())] == 0
    incidents = {dict(k[1])["cause"]: v for k, v in after.items() if k[0] == "rsttrace_reset_incidents_total"}
    assert incidents["no_listener"] >= 3 and incidents["keepalive"] >= 1


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def promql(base: str, query: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def dashboard_queries() -> list[str]:
    d = json.loads((MON / "grafana-dashboard.json").read_text())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append(t["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h")
                       .replace("$instance", ".*").replace("$netns", ".*"))
    return out


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus missing: scripts/install.sh installs Debian's prometheus")
def test_prometheus_scrapes_the_exporter_during_a_reset_scenario(lab):
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="rtexp-prom-"))
    try:
        exp = subprocess.Popen([sys.executable, "-m", "rsttrace", "export", "--listen", "127.0.0.1:0",
                                "--ctx-period", "0.5", "--duration", "120"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(exp)
        target = exp.stdout.readline().strip()
        assert target.startswith("http://127.0.0.1:"), exp.stderr.read() if exp.poll() is not None else target
        hostport = target.removeprefix("http://").removesuffix("/metrics")
        (tmp / "prometheus.yml").write_text(textwrap.dedent(f"""
            global: {{scrape_interval: 1s, evaluation_interval: 1s}}
            rule_files: ["{MON / 'rsttrace.rules.yml'}"]
            scrape_configs:
              - job_name: rsttrace
                static_configs: [{{targets: ["{hostport}"]}}]
        """))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        prom = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
        procs.append(prom)

        def ready():
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                    return r.status == 200, True
            except OSError:
                return False, False
        assert wait_until(ready, timeout=30), (tmp / "prometheus.log").read_text()[-2000:]
        # the target is up before the scenario starts, so the zeros are scraped first
        up = wait_until(lambda: (lambda r: (r == ["1"], r))(
            [x["value"][1] for x in promql(base, 'up{job="rsttrace"}')["data"]["result"]]), timeout=20)
        assert up == ["1"]

        refused_connects(lab, 2)
        cli, lb = conntrack_expiry(lab)

        query = f'sum by (cause, direction) (rsttrace_resets_total{{netns=~"{lab.tag}-.*"}})'
        want = {("no_listener", "sent"): 2, ("no_listener", "recv"): 2,
                ("keepalive", "sent"): 1, ("keepalive", "recv"): 1}

        def by_cause():
            res = promql(base, query)
            assert res["status"] == "success", res
            got = {(r["metric"]["cause"], r["metric"]["direction"]): float(r["value"][1])
                   for r in res["data"]["result"]}
            return got == want, got
        assert wait_until(by_cause, timeout=30) == want
        # the namespaces are the ones the scenario made
        res = promql(base, f'sum by (netns) (rsttrace_resets_total{{netns=~"{lab.tag}-.*", cause="keepalive"}})')
        assert {r["metric"]["netns"] for r in res["data"]["result"]} == {cli, lb}
        res = promql(base, f'rsttrace_conntrack_tcp_timeout_established_seconds{{netns="{lb}"}}')
        assert [float(r["value"][1]) for r in res["data"]["result"]] == [2.0]

        # the alert rules run on the real series: a keepalive reset fires the node-caused alert
        def alert():
            res = promql(base, 'ALERTS{alertname="RsttraceNodeCausedResets", cause="keepalive"}')
            return bool(res["data"]["result"]), res["data"]["result"]
        fired = wait_until(alert, timeout=20)
        assert fired
        # ... naming the node
        assert {r["metric"].get("node") for r in fired} == {socket.gethostname()}
        # every dashboard query is valid PromQL against the real server
        for q in dashboard_queries():
            res = promql(base, q)
            assert res["status"] == "success", (q, res)
        for q in ("sum(rsttrace_reset_incidents_total)", "rsttrace_conntrack_entries",
                  "rsttrace_tcp_state_transitions_total"):
            assert promql(base, q)["data"]["result"], q
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)
