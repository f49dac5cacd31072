"""Fix values computed from what was observed, and the ordering rule."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from rsttrace.analysis.config import audit
from rsttrace.analysis.fixes import (BYTES_PER_ENTRY, Where, conntrack_full_fixes, invalid_fixes,
                                     keepalive_fixes, keepalive_target, ordering_breaks, ordering_ok,
                                     timeout_mismatch_fixes)
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
