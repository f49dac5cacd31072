"""`rsttrace doctor` as a user runs it: the attach plan, the kernel facts,
the audit of a namespace whose timeouts are out of order, and `--cost`,
which measures the programs' runs with the kernel's statistics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kernel

LISTENER = """
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 3306)); s.listen(1)
print("ready", flush=True)
time.sleep(60)
"""


def doctor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsttrace", "doctor", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_doctor_reports_the_plan_and_audits_a_namespace_out_of_order(netns):
    """A namespace with a socket and conntrack's established timeout (600 s)
    below its keepalive time (7200 s): doctor lists it with those values and
    reports the broken ordering, in JSON and as text."""
    ns = netns.add("d")
    netns.run(ns, "sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=600 "
                  "net.ipv4.tcp_keepalive_time=7200")
    listener = netns.python(ns, LISTENER)
    assert listener.stdout.readline().strip() == "ready"
    inode = netns.inode(ns)

    r = doctor("--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    plan = rep["plan"]
    for signal in ("reset_sent", "reset_recv", "ct_drop", "owner"):
        assert plan[signal]["available"] and plan[signal]["hook"], plan[signal]
    assert all(h["why"] for h in plan.values())
    assert all(h["hook"] is None for h in plan.values() if not h["available"])
    assert rep["facts"]["btf"].startswith("present") and rep["facts"]["conntrack"] == "yes"
    mine = [n for n in rep["namespaces"] if n["netns"] == inode]
    assert len(mine) == 1, [n["netns"] for n in rep["namespaces"]]
    assert mine[0]["sysctl"]["tcp_keepalive_time"] == 7200
    assert mine[0]["sysctl"]["nf_conntrack_tcp_timeout_established"] == 600
    broken = [f for f in rep["findings"] if f["netns"] == inode]
    assert [(f["severity"], f["key"]) for f in broken] == [("error", "ordering")]
    assert tuple(broken[0]["values"]) == (7200, 600)

    r = doctor()
    assert r.returncode == 0, r.stderr
    audit = r.stdout.split("\nAudit", 1)[1]
    line = next(x for x in audit.splitlines() if str(inode) in x)
    assert line.split()[0] == "error" and "7200" in line and "600" in line
    assert "Cost at" not in r.stdout  # measured only when asked


def test_doctor_cost_measures_the_programs_runs(netns):
    """--cost: while a namespace makes refused connects, every one sends and
    receives a reset, so both reset programs run at the same rate, and the
    kernel's run statistics are off again afterwards."""
    ns = netns.add("c")
    stats_before = open("/proc/sys/kernel/bpf_stats_enabled").read().strip()
    loop = netns.refusing(ns, 2_000_000, 60)
    try:
        r = doctor("--cost", "2", "--json")
    finally:
        loop.terminate()
        loop.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    cost = json.loads(r.stdout)["cost"]
    assert 2 <= cost["seconds"] < 3
    sent, recv = cost["hooks"]["tcp_send_reset"], cost["hooks"]["tcp_receive_reset"]
    assert sent["runs_per_s"] > 100
    assert 0.9 < recv["runs_per_s"] / sent["runs_per_s"] < 1.1
    assert sent["ns_per_run"] > 0 and 0 < sent["cpu_pct"] < cost["cpu_pct"]
    assert cost["hooks"]["inet_sock_set_state"]["runs_per_s"] >= sent["runs_per_s"]
    assert open("/proc/sys/kernel/bpf_stats_enabled").read().strip() == stats_before


def test_doctor_cost_refuses_bad_seconds():
    for bad in ("0", "-1", "7200"):
        r = doctor("--cost", bad, timeout=30)
        assert r.returncode == 2 and "--cost takes the seconds" in r.stderr, (bad, r.stderr)
