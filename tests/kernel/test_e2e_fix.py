"""End to end: `rsttrace --fix` in the lab makes the keepalive reset go away.

The `keepalive_pool` client turns SO_KEEPALIVE on without per-socket times, so
its namespace's tcp_keepalive_time (7200 s by default) decides, while the
node forgets idle flows after POOL_CT_ESTABLISHED_S. Recorded with
`rsttrace record`, `rsttrace report` names the cause; `rsttrace --fix --yes
--netns <client>` sets tcp_keepalive_time below the node's timeout in the
client namespace only; the same scenario then runs without a reset, and
`rsttrace fix --rollback` puts the value back. Journal and persisted files go
to a temporary directory (RSTTRACE_*_DIR), never /etc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rsttrace.lab import netns
from rsttrace.lab.scenarios import (POOL_CT_ESTABLISHED_S, POOL_IDLE_PAUSE_S, ScenarioRun,
                                    run_scenario)
from rsttrace.lab.topology import CLIENT, VIP, Lab
from rsttrace.schema.recording import read_recording

from e2e_record import record_scenario

pytestmark = pytest.mark.kernel

RSTTRACE = [sys.executable, "-m", "rsttrace"]
KA_TIME = "net.ipv4.tcp_keepalive_time"
CT_EST = "net.netfilter.nf_conntrack_tcp_timeout_established"
SCENARIO = "keepalive_pool"
# Other suites on this machine may hold the lab: queue behind them.
LAB_WAIT_S = 900


@pytest.fixture(scope="module")
def lab():
    subprocess.run(["sh", "-c", "mountpoint -q /sys/kernel/tracing || "
                    "mount -t tracefs nodev /sys/kernel/tracing"], check=False)
    with Lab(lock_wait_s=LAB_WAIT_S) as lab:
        yield lab


@pytest.fixture
def client_keepalive(lab):
    """The client namespace's keepalive values, put back whatever the test did."""
    keys = (KA_TIME, "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes")
    before = {k: netns.get_sysctl(lab.cli, k) for k in keys}
    yield before
    for k, v in before.items():
        netns.set_sysctl(lab.cli, k, v)


def rsttrace(args: list[str], env: dict[str, str],
             timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(RSTTRACE + args, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def client_resets(rows: list[dict]) -> list[dict]:
    return [r for r in rows
            if r["direction"] == "recv" and r["dst"] == CLIENT and r["sport"] == "3306"]


def changes(stdout: str) -> list[str]:
    """The `set KEY=VALUE in NS (was OLD; read back)` lines of an applied fix."""
    return [line for line in stdout.splitlines() if line.startswith("set ")]


def assert_reset_diagnosed(lab: Lab, run: ScenarioRun, rows: list[dict]) -> None:
    assert len(run.errors) == 2, run.errors
    assert all("Connection reset by peer" in e for e in run.errors), run.errors
    recv = client_resets(rows)
    assert {int(r["dport"]) for r in recv} == {p for _, p in run.flows}
    for r in recv:
        assert r["cause"] == "keepalive", r
        assert (r["src"], int(r["netns"])) == (VIP, lab.inodes()[lab.cli])
        # SO_KEEPALIVE on, timed by the namespace's default: slower than the node.
        assert int(r["keepalive_s"]) == 7200
        assert abs(float(r["idle_s"]) - POOL_IDLE_PAUSE_S) <= 0.1 * POOL_IDLE_PAUSE_S, r["idle_s"]


def assert_fixed_run_is_clean(lab: Lab, tmp: Path, tag: str) -> None:
    run, rows, rec = record_scenario(lab, SCENARIO, tmp, tag)
    assert run.errors == [] and len(run.flows) == 2, run.errors
    # Both pooled connections answered the query made after the pause.
    assert all(c["ok"] and c["t_last_recv"] - c["t_connect"] >= POOL_IDLE_PAUSE_S
               for c in run.client["conns"]), run.client["conns"]
    assert run.node_ct_delta["invalid"] == 0
    assert client_resets(rows) == []
    assert not [r for r in read_recording(rec).records if r["kind"] == "reset"
                and CLIENT in (r["src"], r["dst"])]


def assert_plan_is_client_keepalive(lab: Lab, stdout: str) -> int:
    """The fix changed tcp_keepalive_time in the client namespace, nothing
    else, to a value below the node's conntrack timeout; returns that value."""
    assert changes(stdout) and all(f" in {lab.cli} " in line for line in changes(stdout)), stdout
    assert [line for line in changes(stdout) if line.startswith(f"set {KA_TIME}=")], stdout
    value = int(netns.get_sysctl(lab.cli, KA_TIME))
    assert 1 <= value < POOL_CT_ESTABLISHED_S
    assert int(netns.get_sysctl(lab.node, CT_EST)) == POOL_CT_ESTABLISHED_S
    assert int(netns.get_sysctl(lab.node, KA_TIME)) == 7200  # the node was left alone
    return value


def test_fix_from_the_recording_removes_the_keepalive_reset(lab, fix_env, client_keepalive, tmp_path):
    assert client_keepalive[KA_TIME] == "7200"
    run, rows, rec = record_scenario(lab, SCENARIO, tmp_path, "before")
    assert_reset_diagnosed(lab, run, rows)

    r = rsttrace(["--fix", "--yes", "--netns", lab.cli, "--from", str(rec)], fix_env)
    assert r.returncode == 0, r.stdout + r.stderr
    value = assert_plan_is_client_keepalive(lab, r.stdout)
    assert f"set {KA_TIME}={value} in {lab.cli} (was 7200; read back)" in r.stdout
    persisted = Path(fix_env["RSTTRACE_ETC_DIR"]) / "netns.d" / f"{lab.cli}.conf"
    assert f"{KA_TIME} = {value}" in persisted.read_text()

    # The same scenario, the client namespace as the fix left it.
    assert_fixed_run_is_clean(lab, tmp_path, "after")

    r = rsttrace(["fix", "--rollback"], fix_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"restored {KA_TIME}=7200 in {lab.cli}" in r.stdout
    assert netns.get_sysctl(lab.cli, KA_TIME) == "7200"
    assert not persisted.exists()


def test_live_fix_watching_the_scenario_removes_the_reset(lab, fix_env, client_keepalive, tmp_path):
    """`rsttrace --fix --yes --netns <client>` with no recording: it watches
    live while the scenario resets its pool, then plans from what it saw."""
    assert client_keepalive[KA_TIME] == "7200"
    box: dict[str, ScenarioRun] = {}
    t = threading.Thread(target=lambda: box.setdefault("run", run_scenario(lab, SCENARIO)))
    t.start()
    try:
        # Start once the scenario has set the node's timeout, so the fix's
        # first context snapshot already holds it; watch past the reset.
        time.sleep(1.0)
        r = rsttrace(["--fix", "--yes", "--netns", lab.cli,
                      "--observe", f"{POOL_IDLE_PAUSE_S + 3:g}"], fix_env)
    finally:
        t.join(60)
    assert box["run"].errors, "the scenario did not reproduce"
    assert r.returncode == 0, r.stdout + r.stderr
    assert "keepalive" in r.stdout
    assert_plan_is_client_keepalive(lab, r.stdout)

    assert_fixed_run_is_clean(lab, tmp_path, "after-live")
    r = rsttrace(["fix", "--rollback"], fix_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert netns.get_sysctl(lab.cli, KA_TIME) == "7200"
