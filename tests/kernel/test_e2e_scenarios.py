"""End to end: each lab scenario under `rsttrace record`, then `rsttrace
report`; the report's rows for the scenario's flows must name the cause, the
client tuple, the sending namespace, the idle time and the keepalive state,
the evidence's numbers and the fix; the controls must produce no reset at
all."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from rsttrace.lab.scenarios import GATEWAY_PAUSES, SCENARIOS, SERVER_WAIT_TIMEOUT_S, ScenarioRun
from rsttrace.lab.topology import BACKEND, CLIENT, FW_TABLE, MYSQL_PORT, PROXY_PORT, REMOTE_DB, VIP
from rsttrace.schema.recording import read_recording

from e2e_record import lab, record_scenario  # noqa: F401 (lab: a fixture)

pytestmark = pytest.mark.kernel

RSTTRACE = [sys.executable, "-m", "rsttrace"]


def _mine(rows: list[dict], run: ScenarioRun) -> list[dict]:
    port = str(run.expect.service_port)
    return [r for r in rows if CLIENT in (r["src"], r["dst"]) and port in (r["sport"], r["dport"])]


def _reset_reasons() -> bool:
    """tcp_send_reset carries the kernel's reason (6.10 on)."""
    fmt = Path("/sys/kernel/tracing/events/tcp/tcp_send_reset/format")
    return fmt.exists() and "sk_rst_reason reason" in fmt.read_text()


def _client_resets(run: ScenarioRun, rows: list[dict]) -> list[tuple[dict, dict]]:
    """The report's rows of resets received on the scenario's client
    connections, one per connection, each with what the client measured."""
    conns = {c["lport"]: c for c in run.client["conns"] if c.get("lport")}
    recv = [r for r in _mine(rows, run) if r["direction"] == "recv" and r["dst"] == CLIENT]
    assert sorted(int(r["dport"]) for r in recv) == sorted(conns)
    return [(r, conns[int(r["dport"])]) for r in recv]


def test_server_idle_is_peer_closed(lab, tmp_path):
    """MariaDB ends a session idle past wait_timeout with SO_LINGER 0: its
    socket resets the idle pooled connection at that moment. The idle time
    is the server's timeout, and the pool's fix is below it."""
    run, rows, rec = record_scenario(lab, "server_idle", tmp_path)
    assert len(run.errors) == 2
    for r, c in _client_resets(run, rows):
        assert (r["cause"], r["src"], r["sport"], r["state"]) == ("peer_closed", VIP, "3306", "ESTABLISHED"), r
        # the reset came as the server timed out: the client's socket turned readable then
        waited = c["t_fin"] - c["t_last_recv"]
        assert abs(float(r["idle_s"]) - waited) <= max(0.05, 0.1 * waited), (r["idle_s"], waited)
        assert abs(waited - SERVER_WAIT_TIMEOUT_S) <= 0.2 * SERVER_WAIT_TIMEOUT_S
        m = re.search(r"dropped the connection idle ([\d.]+) s", r["evidence"])
        assert m and abs(float(m.group(1)) - waited) <= 0.1, r["evidence"]
        assert f"netns {lab.db} (" in r["evidence"]
        if _reset_reasons():
            assert r["confidence"] == "medium" and "TCP_STATE" in r["evidence"]
        assert "sqlalchemy.pool_recycle=0.5" in r["fix"] and "go.SetConnMaxIdleTime=0.5" in r["fix"]
        assert "sysctl" not in r["fix"]
    sent = [r for r in rows if r["direction"] == "sent" and r["src"] == BACKEND and r["sport"] == "3306"]
    assert len(sent) == 2 and all(int(r["netns"]) == lab.inodes()[lab.db] and r["state"] == "CLOSE"
                                  for r in sent)


def test_proxy_idle_is_peer_closed_after_the_fin(lab, tmp_path):
    """The proxy closed the idle connection with a FIN; the pool wrote
    later and the proxy's kernel answered from its TIME_WAIT socket. The
    client's idle time counts from the FIN: it equals the pause between
    the FIN's arrival (its idle socket turning readable) and the write."""
    run, rows, rec = record_scenario(lab, "proxy_idle", tmp_path)
    assert len(run.errors) == 1
    for r, c in _client_resets(run, rows):
        assert (r["cause"], r["confidence"], r["src"], r["sport"]) == ("peer_closed", "high", VIP,
                                                                       str(PROXY_PORT)), r
        assert r["state"] in ("CLOSE_WAIT", "LAST_ACK")
        after_fin = c["t_write"] - c["t_fin"]
        assert abs(float(r["idle_s"]) - after_fin) <= max(0.05, 0.1 * after_fin), (r["idle_s"], after_fin)
        wrote = float(re.search(r"the application wrote ([\d.]+) s after that FIN", r["evidence"]).group(1))
        assert abs(wrote - after_fin) <= max(0.1, 0.1 * after_fin), r["evidence"]
        assert f"netns {lab.db} (" in r["evidence"] and "TIME_WAIT socket" in r["evidence"]
        if _reset_reasons():
            assert "TCP_TIMEWAIT_SOCKET" in r["evidence"]
        assert "pool_recycle" in r["fix"] and "SetConnMaxIdleTime" in r["fix"] and "sysctl" not in r["fix"]
    # The proxy's kernel answered from its TIME_WAIT socket, behind the masquerade.
    sent = [r for r in rows if r["direction"] == "sent" and r["src"] == BACKEND
            and r["sport"] == str(PROXY_PORT)]
    assert len(sent) == 1 and int(sent[0]["netns"]) == lab.inodes()[lab.db] and sent[0]["state"] == "TIME_WAIT"
    if _reset_reasons():
        assert sent[0]["kernel_reason"] == "TCP_TIMEWAIT_SOCKET"


def test_firewall_reject_names_the_rule(lab, tmp_path):
    """The node's `reject with tcp reset` refuses a connect while MariaDB
    listens: no TCP stack sends the reset; the drop of the SYN in the node
    and the rule read there name the cause."""
    run, rows, rec = record_scenario(lab, "firewall_reject", tmp_path)
    assert len(run.errors) == 1 and "Connection refused" in run.errors[0]
    recv = [r for r in _mine(rows, run) if r["direction"] == "recv"]
    assert len(recv) == 1
    r = recv[0]
    assert (r["cause"], r["state"], r["src"], r["dst"]) == ("firewall_reject", "SYN_SENT", VIP, CLIENT), r
    ev = r["evidence"]
    assert f"netns {lab.node} (" in ev and "dropped the flow's SYN" in ev
    assert f"rule nft ip {FW_TABLE} forward handle " in ev and "reject with tcp reset" in ev, ev
    handle = re.search(rf"rule nft ip {FW_TABLE} forward handle (\d+)", ev).group(1)
    assert r["fix"] == f"ip netns exec {lab.node} nft delete rule ip {FW_TABLE} forward handle {handle}"
    records = read_recording(rec).records
    assert not [x for x in records if x["kind"] == "reset" and x["dir"] == "sent"]
    drops = [x for x in records if x["kind"] == "ct_drop" and x["netns"] == lab.inodes()[lab.node]]
    # the drop carries the SYN's flow as the node saw it (after DNAT): tied by it
    assert [(d["family"], d["src"], d["sport"], d["dst"], d["dport"], d["tcp_flags"]) for d in drops] == \
        [(4, CLIENT, int(r["dport"]), BACKEND, MYSQL_PORT, 0x02)], drops
    assert r["confidence"] == "high" and "tied by time" not in ev
    assert f"({CLIENT}:{r['dport']} -> {BACKEND}:{MYSQL_PORT})" in ev, ev


def test_gateway_idle_is_inferred(lab, tmp_path):
    """A gateway beyond the node (its namespace is not traced, its resets
    are made in user space) forgets flows idle past its timeout: three
    resets from one remote after long idles name an idle timeout of at
    most the shortest of them, and the keepalive fix below it."""
    run, rows, rec = record_scenario(lab, "gateway_idle", tmp_path)
    assert len(run.errors) == 3 and all("Connection reset by peer" in e for e in run.errors)
    lo, hi = min(GATEWAY_PAUSES), max(GATEWAY_PAUSES)
    resets = _client_resets(run, rows)
    assert len(resets) == 3
    for r, c in resets:
        assert (r["cause"], r["confidence"], r["src"], r["sport"]) == ("keepalive", "medium", REMOTE_DB, "3306"), r
        pause = c["t_write"] - c["t_last_recv"]
        assert abs(float(r["idle_s"]) - pause) <= 0.1 * pause
        m = re.search(rf"an idle timeout of at most ([\d.]+) s on the path to {REMOTE_DB}:3306 "
                      r"\(3 resets, idle ([\d.]+)\.\.([\d.]+) s\)", r["evidence"])
        assert m, r["evidence"]
        assert abs(float(m.group(1)) - lo) <= 0.15 and float(m.group(1)) == float(m.group(2))
        assert abs(float(m.group(3)) - hi) <= 0.15
        assert "SO_KEEPALIVE off" in r["evidence"] and r["keepalive_s"] == ""
        assert f"ip netns exec {lab.cli} sysctl -w net.ipv4.tcp_keepalive_time=1" in r["fix"]
    # no TCP stack on the host sent it, and nothing of the gateway was traced
    assert not [x for x in read_recording(rec).records if x["kind"] == "reset" and x["dir"] == "sent"]


@pytest.mark.parametrize("name", ["keepalive", "conntrack_invalid", "peer_reset"])
def test_established_flow_resets_are_diagnosed(lab, name, tmp_path):
    run, rows, _ = record_scenario(lab, name, tmp_path)
    ex = run.expect
    assert run.errors, "the scenario did not reproduce"
    mine = _mine(rows, run)
    recv = [r for r in mine if r["direction"] == "recv" and r["dst"] == CLIENT]
    ports = {p for _, p in run.flows}
    # One reset received per pooled connection whose query failed, on its own tuple.
    assert {int(r["dport"]) for r in recv} == {p for p in ports if p in
                                                {c["lport"] for c in run.client["conns"] if not c["ok"]}}
    for r in recv:
        assert r["cause"] == ex.cause, r
        assert (r["src"], r["sport"]) == (VIP, str(ex.service_port))
        assert int(r["netns"]) == lab.inodes()[lab.cli]
        if ex.idle_s is not None:
            assert abs(float(r["idle_s"]) - ex.idle_s) <= max(0.05, 0.1 * ex.idle_s), r["idle_s"]
        if ex.keepalive is False:
            assert r["keepalive_s"] == ""  # SO_KEEPALIVE off: no effective keepalive
    sender_ns = lab.inodes()[{"node": lab.node, "db": lab.db}[ex.sender]]
    if ex.sender == "node":
        # The node's no-socket reset is written on the client's own tuple
        # (a later reset the client sends back at the server is aftermath).
        sent = [r for r in mine if r["direction"] == "sent" and r["dst"] == CLIENT]
        assert sent and all(int(r["netns"]) == sender_ns and r["cause"] == ex.cause for r in sent)
        assert {int(r["dport"]) for r in sent} == {int(r["dport"]) for r in recv}
    else:
        # Behind the masquerade the backend resets the node's tuple of the flow.
        sent = [r for r in rows if r["direction"] == "sent" and r["src"] == BACKEND
                and r["sport"] == str(ex.service_port)]
        assert sent and all(int(r["netns"]) == sender_ns for r in sent)


def test_keepalive_recording_carries_keepalive_fields(lab, tmp_path):
    run, _, rec = record_scenario(lab, "keepalive", tmp_path)
    resets = [r for r in read_recording(rec).records
              if r["kind"] == "reset" and r["dir"] == "recv" and r["dst"] == CLIENT]
    assert len(resets) == len(run.flows) == 2
    for r in resets:
        assert r["keepalive"] is False and isinstance(r["ka_time_s"], int)
        assert r["dport"] in {p for _, p in run.flows}


def test_no_listener_is_diagnosed(lab, tmp_path):
    run, rows, _ = record_scenario(lab, "no_listener", tmp_path)
    mine = _mine(rows, run)
    recv = [r for r in mine if r["direction"] == "recv"]
    assert len(recv) == 1 and recv[0]["cause"] == "no_listener" and recv[0]["state"] == "SYN_SENT"
    assert (recv[0]["src"], recv[0]["dst"]) == (VIP, CLIENT)
    sent = [r for r in rows if r["direction"] == "sent" and r["src"] == BACKEND]
    assert sent and sent[0]["cause"] == "no_listener"
    assert int(sent[0]["netns"]) == lab.inodes()[lab.db]


@pytest.mark.parametrize("name", ["keepalive_fixed", "conntrack_invalid_fixed", "server_idle_fixed",
                                  "firewall_reject_fixed", "gateway_idle_fixed"])
def test_controls_produce_no_reset(lab, name, tmp_path):
    run, rows, rec = record_scenario(lab, name, tmp_path)
    assert run.errors == [] and run.flows
    assert _mine(rows, run) == []
    assert not [r for r in read_recording(rec).records if r["kind"] == "reset"]


def test_conntrack_full_is_seen(lab, tmp_path):
    run, rows, rec = record_scenario(lab, "conntrack_full", tmp_path)
    timed_out = [e for e in run.errors if "timed out" in e]
    assert timed_out
    records = read_recording(rec).records
    node = lab.inodes()[lab.node]
    full = [r for r in records if r["kind"] == "ct_full"]
    drops = [r for r in records if r["kind"] == "ct_drop" and r["netns"] == node]
    assert full and all(r["netns"] == node for r in full)
    assert len(drops) >= len(timed_out)
    # No client flow was reset: the table refused new connections instead.
    assert all(r["cause"] == "conntrack_full" for r in _mine(rows, run))


def test_every_scenario_is_covered():
    # keepalive_pool: recorded, reported, fixed and re-run in test_e2e_fix.py.
    covered = {"keepalive", "keepalive_pool", "conntrack_invalid", "peer_reset", "no_listener",
               "keepalive_fixed", "conntrack_invalid_fixed", "conntrack_full", "server_idle",
               "server_idle_fixed", "proxy_idle", "firewall_reject", "firewall_reject_fixed",
               "gateway_idle", "gateway_idle_fixed"}
    assert covered == set(SCENARIOS)
