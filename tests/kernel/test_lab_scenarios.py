"""The lab reproduces each cause in the kernel, checked without the tracer:
the driver's own error, and the node's conntrack counters."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rsttrace.lab import netns
from rsttrace.lab.scenarios import (GATEWAY_PAUSES, POOL_CT_ESTABLISHED_S, SCENARIOS, SERVER_WAIT_TIMEOUT_S,
                                    run_scenario)
from rsttrace.lab.topology import FW_TABLE, GATEWAY_IDLE_S, PREFIX, Lab

pytestmark = pytest.mark.kernel

CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"
KA_TIME = "net.ipv4.tcp_keepalive_time"
LAB_WAIT_S = 900  # other suites on this machine may hold the lab: queue behind them


@pytest.fixture(scope="module")
def lab():
    with Lab(lock_wait_s=LAB_WAIT_S) as lab:
        yield lab


def test_lab_is_closed_to_the_root_namespace(lab):
    for ns in (lab.cli, lab.node, lab.db, lab.gw):
        links = subprocess.run(["ip", "-d", "-n", ns, "link", "show"], capture_output=True,
                               text=True, check=True).stdout
        # Every veth peer lives in another lab namespace, never in the root one.
        peers = re.findall(r"link-netns (\S+)", links)
        assert peers and all(p.startswith(f"{PREFIX}{lab.run_id}-") for p in peers), links
    for ns in (lab.node, lab.gw):
        routes = subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True, check=True).stdout
        assert "default" not in routes
    # the gateway's kernel forwards nothing: its user-space process does
    assert netns.get_sysctl(lab.gw, "net.ipv4.ip_forward") == "0"


def test_keepalive_resets_the_idle_pool(lab):
    run = run_scenario(lab, "keepalive")
    assert len(run.errors) == 2
    assert all("Connection reset by peer" in e and "(2013," in e for e in run.errors), run.errors
    # The client's write after the idle met no conntrack entry: INVALID at the node.
    assert run.node_ct_delta["invalid"] >= 2
    gaps = [c["t_error"] - c["t_last_recv"] for c in run.client["conns"]]
    assert all(abs(g - run.expect.idle_s) < 0.1 * run.expect.idle_s for g in gaps), gaps


def test_keepalive_probes_prevent_the_reset(lab):
    run = run_scenario(lab, "keepalive_fixed")
    assert run.errors == [] and len(run.flows) == 2
    assert run.reproduced


def test_keepalive_pool_follows_the_client_namespace_keepalive(lab):
    """SO_KEEPALIVE on without per-socket times: the namespace's 7200 s
    default loses to the node's timeout; a namespace value below it wins, and
    the lab leaves the client's sysctls as they are between runs."""
    before = netns.get_sysctl(lab.cli, KA_TIME)
    assert before == "7200"
    run = run_scenario(lab, "keepalive_pool")
    assert len(run.errors) == 2 and all("Connection reset by peer" in e for e in run.errors)
    assert all(c["keepalive"] for c in run.client["conns"])
    assert run.node_ct_delta["invalid"] >= 2
    try:
        netns.set_sysctl(lab.cli, KA_TIME, POOL_CT_ESTABLISHED_S // 2)
        fixed = run_scenario(lab, "keepalive_pool")
        assert netns.get_sysctl(lab.cli, KA_TIME) == str(POOL_CT_ESTABLISHED_S // 2)
    finally:
        netns.set_sysctl(lab.cli, KA_TIME, before)
    assert fixed.errors == [] and len(fixed.flows) == 2
    assert fixed.node_ct_delta["invalid"] == 0


def test_conntrack_full_times_out_new_connections_and_restores_max(lab):
    before = Path(CT_MAX).read_text()
    run = run_scenario(lab, "conntrack_full")
    assert Path(CT_MAX).read_text() == before
    timed_out = [e for e in run.errors if "timed out" in e and "(2003," in e]
    assert timed_out, run.errors
    assert run.node_ct_delta["drop"] >= len(timed_out)
    assert len(run.flows) >= 1  # some got in before the table filled


def test_conntrack_invalid_resets_and_be_liberal_fixes_it(lab):
    run = run_scenario(lab, "conntrack_invalid")
    assert len(run.errors) == 1 and "Connection reset by peer" in run.errors[0], run.errors
    assert run.node_ct_delta["invalid"] >= 1
    control = run_scenario(lab, "conntrack_invalid_fixed")
    assert control.errors == [] and control.node_ct_delta["invalid"] == 0


def test_no_listener_is_refused(lab):
    run = run_scenario(lab, "no_listener")
    assert len(run.errors) == 1 and "Connection refused" in run.errors[0] and "(2003," in run.errors[0]


def test_peer_reset_by_the_proxy(lab):
    run = run_scenario(lab, "peer_reset")
    assert len(run.errors) == 1 and "Connection reset by peer" in run.errors[0], run.errors
    assert run.node_ct_delta["invalid"] == 0  # a clean reset, nothing odd at the node


def test_proxy_idle_closes_with_a_fin_and_the_write_is_reset(lab):
    run = run_scenario(lab, "proxy_idle")
    assert len(run.errors) == 1 and "(2013," in run.errors[0], run.errors
    (c,) = run.client["conns"]
    # the FIN came after the proxy's idle limit, before the pool wrote
    assert c["t_last_recv"] < c["t_fin"] < c["t_write"]


def test_server_idle_mariadb_drops_idle_sessions(lab):
    run = run_scenario(lab, "server_idle")
    assert len(run.errors) == 2 and all("(2006," in e or "(2013," in e for e in run.errors), run.errors
    for c in run.client["conns"]:
        assert abs(c["t_fin"] - c["t_last_recv"] - SERVER_WAIT_TIMEOUT_S) < 0.2 * SERVER_WAIT_TIMEOUT_S
    # the server's own setting is back
    assert lab.mariadb.global_variable("wait_timeout") == "28800"
    control = run_scenario(lab, "server_idle_fixed")
    assert control.errors == [] and any(c["evicted"] for c in control.client["conns"])


def test_firewall_reject_refuses_while_the_database_listens(lab):
    run = run_scenario(lab, "firewall_reject")
    assert len(run.errors) == 1 and "Connection refused" in run.errors[0]
    rules = netns.ns_exec(lab.node, ["nft", "list", "table", "ip", FW_TABLE]).stdout
    assert "reject with tcp reset" in rules and "packets 1 " in rules
    control = run_scenario(lab, "firewall_reject_fixed")   # the next scenario removes the rule
    assert control.errors == [] and len(control.flows) == 1
    assert netns.ns_exec(lab.node, ["nft", "list", "table", "ip", FW_TABLE], check=False).returncode != 0


def test_gateway_forgets_idle_flows_and_keepalive_holds_them(lab):
    run = run_scenario(lab, "gateway_idle")
    assert len(run.errors) == 3 and all("Connection reset by peer" in e for e in run.errors), run.errors
    for c, pause in zip(run.client["conns"], GATEWAY_PAUSES):
        assert pause > GATEWAY_IDLE_S and abs(c["t_write"] - c["t_last_recv"] - pause) < 0.1
    # nothing on the node made the resets
    assert run.node_ct_delta["invalid"] == 0
    control = run_scenario(lab, "gateway_idle_fixed")
    assert control.errors == [] and len(control.flows) == 3


def test_every_scenario_has_a_test():
    names = {"keepalive", "keepalive_fixed", "keepalive_pool", "conntrack_full", "conntrack_invalid",
             "conntrack_invalid_fixed", "no_listener", "peer_reset", "proxy_idle", "server_idle",
             "server_idle_fixed", "firewall_reject", "firewall_reject_fixed", "gateway_idle",
             "gateway_idle_fixed"}
    assert set(SCENARIOS) == names
