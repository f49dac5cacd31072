"""Fix values computed from what was observed, and the ordering rule."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from rsttrace.analysis.config import audit
from rsttrace.analysis.fixes import (BYTES_PER_ENTRY, FixBook, Where, conntrack_full_fixes, firewall_fixes,
                                     invalid_fixes, keepalive_fixes, keepalive_target, merge_fixes, ordering_breaks,
                                     ordering_ok, peer_closed_fixes, pool_idle_target, timeout_mismatch_fixes)
from rsttrace.analysis.vocab import TIMEOUT_FINDINGS, FindingKey, Severity, Timeout


KA, VS, CT = Timeout.KEEPALIVE, Timeout.IPVS_TCP, Timeout.CT_ESTABLISHED

# keepalive, IPVS tcp, conntrack established -> the pairs out of order as
# (lower, upper, no margin); the one table the rule, the audit and the
# planner are held to
ORDER_CASES = [
    (600, 900, 86400, []),
    (300, None, 432000, []),
    (None, 900, 900, []),                                      # IPVS may equal conntrack
    (None, None, None, []),
    (7200, 7200, 7200, [(KA, VS, True), (KA, CT, True)]),      # the seed: no margin anywhere
    (900, 900, None, [(KA, VS, True)]),
    (None, 900, 600, [(VS, CT, False)]),
    (1000, 900, 86400, [(KA, VS, False)]),
    (7200, 900, 600, [(VS, CT, False), (KA, VS, False), (KA, CT, False)]),
    (7200, None, 600, [(KA, CT, False)]),
    (600, None, 600, [(KA, CT, True)]),
]


@pytest.mark.parametrize("ka,ipvs,est,breaks", ORDER_CASES)
def test_ordering_rule(ka, ipvs, est, breaks):
    got = ordering_breaks(ka, ipvs, est)
    assert [(b.lower, b.upper, b.no_margin) for b in got] == breaks
    assert ordering_ok(ka, ipvs, est) is (not breaks)


@pytest.mark.parametrize("ka,ipvs,est,breaks", ORDER_CASES)
def test_audit_applies_the_rule(ka, ipvs, est, breaks):
    ns = {"netns": 1, "name": "lb", "ipvs": None if ipvs is None else {"tcp": ipvs},
          "sysctl": {k: v for k, v in (("tcp_keepalive_time", ka),
                                        ("nf_conntrack_tcp_timeout_established", est)) if v is not None}}
    found = [f for f in audit([ns]) if f.key in TIMEOUT_FINDINGS]
    assert [(*f.pair, f.key == FindingKey.NO_MARGIN) for f in found] == breaks
    assert all(f.severity == (Severity.WARNING if f.key == FindingKey.NO_MARGIN else Severity.ERROR)
               for f in found)


@pytest.mark.parametrize("timeout,target", [(900, 450), (350, 175), (240, 120), (7200, 600), (4, 2), (1, None)])
def test_keepalive_target(timeout, target):
    assert keepalive_target(timeout) == target


@given(st.floats(min_value=2, max_value=10**6), st.floats(min_value=2, max_value=10**6))
def test_recommended_values_keep_ordering(ct_est, ipvs):
    if ct_est >= ipvs:
        return
    fixes = timeout_mismatch_fixes(Where(1, "lb"), ct_est, ipvs, keepalive_s=None, receiver=Where(2, "cli"))
    new_est = next(f.value for f in fixes if f.key.endswith("timeout_established"))
    ka = next(f.value for f in fixes if f.key == "net.ipv4.tcp_keepalive_time")
    assert ordering_ok(ka, ipvs, new_est)


def test_keepalive_fix_in_socket_namespace_with_pod_and_pools():
    fixes = keepalive_fixes(Where(4026532300, "cli", 77), None, 900.0, "ipvs tcp timeout", sysctl_now=7200)
    by_key = {f.key: f for f in fixes}
    k = by_key["net.ipv4.tcp_keepalive_time"]
    assert (k.scope, k.current, k.value) == ("netns", 7200, 450)
    assert k.command == "ip netns exec cli sysctl -w net.ipv4.tcp_keepalive_time=450"
    assert "SO_KEEPALIVE off" in k.reason
    assert 'value: "450"' in by_key["securityContext.sysctls"].snippet
    assert by_key["hikaricp.keepaliveTime"].value == 450_000
    assert "SetConnMaxIdleTime(450" in by_key["go.SetConnMaxIdleTime"].snippet
    assert "pool_recycle=450" in by_key["sqlalchemy.pool_recycle"].snippet


@pytest.mark.parametrize("where,prefix,scope", [
    (Where(1, "init"), "sysctl -w", "node"),
    (Where(1, "pid:345"), "nsenter --net=/proc/345/ns/net sysctl -w", "netns"),
    (Where(1, None, 99), "nsenter --net=/proc/99/ns/net sysctl -w", "netns"),
    (Where(1, "bad name;rm"), "ip netns exec 'bad name;rm' sysctl -w", "netns")])
def test_namespace_commands(where, prefix, scope):
    f = keepalive_fixes(where, 7200, 900, "ipvs")[0]
    assert f.command.startswith(prefix) and f.scope == scope


def test_conntrack_full_sized_from_peak_and_ram():
    fixes = conntrack_full_fixes(current_max=131072, current_buckets=16384, peak=131072, full_seen=True)
    mx, bk = fixes[0], fixes[1]
    assert mx.value == 262144 and bk.value >= mx.value // 4
    assert mx.command == "sysctl -w net.netfilter.nf_conntrack_max=262144" and mx.scope == "node"
    small = conntrack_full_fixes(current_max=131072, current_buckets=16384, peak=131072, full_seen=True,
                                 ram_bytes=512 * 2**20)
    assert small[0].value * BYTES_PER_ENTRY <= 0.10 * 512 * 2**20 and "capped" in small[0].reason
    quiet = conntrack_full_fixes(current_max=262144, current_buckets=65536, peak=1000, full_seen=False)
    assert quiet[0].value == 262144   # never lowers the limit


def test_invalid_fixes_are_tradeoffs():
    fixes = invalid_fixes(Where(5, "lb"), 0)
    assert all(f.tradeoff for f in fixes)
    assert fixes[0].command == "ip netns exec lb sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1"


def test_audit_seed_values():
    f = audit({"namespaces": [{"netns": 1, "name": "init", "ipvs": {"tcp": 7200},
                               "sysctl": {"tcp_keepalive_time": 7200, "nf_conntrack_tcp_timeout_established": 7200},
                               "ct": {"count": 10, "max": 131072, "buckets": 32768}}]})
    keys = [x.key for x in f]
    assert keys.count("no_margin") == 2 and "ordering" not in keys
    assert "leaves no margin" in f[0].message


def test_audit_broken_ordering_and_full():
    f = audit([{"netns": 2, "name": "lb", "ipvs": {"tcp": 900},
                "sysctl": {"tcp_keepalive_time": 7200, "nf_conntrack_tcp_timeout_established": 600},
                "ct": {"count": 99, "max": 100, "buckets": 10}}], idle_timeouts={"nlb": 350})
    keys = {x.key for x in f}
    assert keys == {"ordering", "idle_timeout", "ct_full", "buckets"}
    assert audit([{"netns": 3, "sysctl": {"tcp_keepalive_time": 300,
                                          "nf_conntrack_tcp_timeout_established": 86400},
                   "ipvs": {"tcp": 900}, "ct": {"count": 1, "max": 100, "buckets": 50}}]) == []


# ---- one fix per setting ----------------------------------------------------
CLI_NS = Where(4026532300, "cli")


def _ka(timeout, where=CLI_NS, cause="keepalive", ka=None):
    return keepalive_fixes(where, ka, timeout, "conntrack established timeout", cause=cause, sysctl_now=7200)


@pytest.mark.parametrize("lists, key, scope, value, n_covers", [
    # two incidents in one namespace: 2 s and 6 s timeouts ask 1 and 3 -> 1 covers both
    ([_ka(2), _ka(6)], "net.ipv4.tcp_keepalive_time", "netns", 1, 2),
    ([_ka(6), _ka(2)], "net.ipv4.tcp_keepalive_time", "netns", 1, 2),
    ([_ka(6), _ka(6)], "net.ipv4.tcp_keepalive_time", "netns", 3, 1),    # the same need once
    ([_ka(900), _ka(350)], "go.SetConnMaxIdleTime", "pool", 175, 2),
    ([conntrack_full_fixes(1000, 256, 900, True), conntrack_full_fixes(1000, 256, 5000, True)],
     "net.netfilter.nf_conntrack_max", "node", 16384, 2),                 # the larger table
    ([timeout_mismatch_fixes(Where(1, "lb"), 600, 900), timeout_mismatch_fixes(Where(1, "lb"), 600, 1800)],
     "net.netfilter.nf_conntrack_tcp_timeout_established", "netns", 1800, 2),   # the longer timeout
    # a requirement that is no number rides along with the numeric value
    ([peer_closed_fixes(CLI_NS, 4.0), _ka(6)], "sqlalchemy.pool_recycle", "pool", 3, 2),
    ([_ka(6), peer_closed_fixes(CLI_NS, 4.0)], "sqlalchemy.pool_recycle", "pool", 3, 2),
])
def test_one_fix_per_setting_the_strictest(lists, key, scope, value, n_covers):
    merged = merge_fixes(f for fl in lists for f in fl)
    same = [f for f in merged if f.key == key and f.scope == scope]
    assert len(same) == 1
    f = same[0]
    assert f.value == value
    assert len(f.covers) == n_covers, f.covers
    if f.key == "net.ipv4.tcp_keepalive_time":
        assert f.command.endswith(f"tcp_keepalive_time={value}")   # the command is the chosen value's


def test_merge_keeps_namespaces_apart_and_order():
    other = Where(4026532400, "cli2")
    merged = merge_fixes(_ka(2) + _ka(6, where=other))
    ka = [(f.netns, f.value) for f in merged if f.key == "net.ipv4.tcp_keepalive_time"]
    assert ka == [(4026532300, 1), (4026532400, 3)]


def test_fix_book_is_bounded_and_settles_one_incident(monkeypatch):
    from rsttrace.analysis import fixes as F
    monkeypatch.setattr(F, "BOOK_SETTINGS", 10)
    book = FixBook()
    for i in range(100):
        book.add(_ka(4 + i % 7, where=Where(1000 + i, f"n{i}")))
    assert len(book.merged()) <= 10
    book = FixBook()
    for t in range(2, 40):
        book.add(_ka(t))
    settled = book.settle(_ka(30))
    ka = next(f for f in settled if f.key == "net.ipv4.tcp_keepalive_time")
    assert ka.value == 1 and len(ka.covers) == F.COVERS_MAX + 1 and ka.covers[-1].startswith("and ")


def test_peer_closed_fixes_carry_the_measured_time_and_no_sysctl():
    fixes = peer_closed_fixes(CLI_NS, 4.5)
    assert not any(f.key.startswith("net.") for f in fixes)
    assert {f.scope for f in fixes} == {"pool", "server"}
    assert all("4.5 s after the server closed" in f.reason for f in fixes)
    assert any("pool_pre_ping=True" in (f.snippet or "") for f in fixes)
    assert any(f.key == "mysql.wait_timeout" for f in fixes)


@pytest.mark.parametrize("rule, ref, command", [
    ({"source": "nft", "family": "ip", "table": "filter", "chain": "forward", "handle": 7,
      "text": "tcp dport 3306 reject with tcp reset"},
     "nft ip filter forward handle 7", "ip netns exec lb nft delete rule ip filter forward handle 7"),
    ({"source": "iptables", "family": "ip", "table": "filter", "chain": "INPUT",
      "text": "-A INPUT -p tcp -m tcp --dport 3306 -j REJECT --reject-with tcp-reset"},
     "iptables filter INPUT: -A INPUT -p tcp -m tcp --dport 3306 -j REJECT --reject-with tcp-reset",
     "ip netns exec lb iptables -t filter -D INPUT -p tcp -m tcp --dport 3306 -j REJECT --reject-with tcp-reset"),
    (None, "firewall rule", "ip netns exec lb nft -a list ruleset | grep -n reject"),
])
def test_firewall_fix_names_the_rule(rule, ref, command):
    (f,) = firewall_fixes(Where(1, "lb"), rule, "10.0.1.2:40000 -> 10.0.2.2:3306")
    assert (f.cause, f.key, f.command, f.tradeoff) == ("firewall_reject", ref, command, True)
    assert "10.0.1.2:40000 -> 10.0.2.2:3306" in f.reason


@pytest.mark.parametrize("timeout, target", [(1.004, 0.5), (8, 4.0), (60, 54.0), (350, 315.0), (28800, 25920.0)])
def test_pool_idle_target_below_a_server_timeout(timeout, target):
    assert pool_idle_target(timeout) == target and pool_idle_target(timeout) < timeout


def test_peer_closed_fixes_from_the_server_timeout_are_numbers():
    by_key = {f.key: f for f in peer_closed_fixes(CLI_NS, idle_s=60.0)}
    assert by_key["sqlalchemy.pool_recycle"].value == 54.0
    assert "pool_recycle=54" in by_key["sqlalchemy.pool_recycle"].snippet
    assert by_key["go.SetConnMaxIdleTime"].snippet == "db.SetConnMaxIdleTime(54000 * time.Millisecond)"
    assert by_key["hikaricp.idleTimeout"].value == 54000
    assert "after 60 s idle" in by_key["mysql.wait_timeout"].reason
