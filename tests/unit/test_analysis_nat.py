"""Pairing the two halves of a reset that NAT rewrote: a backend's reset to
the router's masquerade address and the client socket receiving it from
the VIP, a few ms apart."""

from __future__ import annotations

import pytest

from rsttrace.analysis.classify import Classifier
from live_feed import feed_live

CLI, NODE, DB = 4026532300, 4026532247, 4026532301
T0 = 1_700_000_000.0
VIP, CLIENT, BACKEND, MASQ = "10.96.0.10", "10.251.0.2", "10.251.1.2", "10.251.1.1"


def backend_sent(t, *, has_sock=True, reason="TCP_ABORT_ON_LINGER", syn=None, sport=3306, dport=51000,
                 netns=DB, dst=MASQ):
    return {"kind": "reset", "t": T0 + t, "netns": netns, "dir": "sent", "family": 4, "src": BACKEND,
            "sport": sport, "dst": dst, "dport": dport, "state": "ESTABLISHED" if has_sock else "",
            "has_sock": has_sock, "reason": reason, "syn": syn}


def client_recv(t, *, state="ESTABLISHED", sport=3306, dport=40000, idle_ms=1000, netns=CLI):
    return {"kind": "reset", "t": T0 + t, "netns": netns, "dir": "recv", "family": 4, "src": VIP,
            "sport": sport, "dst": CLIENT, "dport": dport, "state": state, "has_sock": True,
            "idle_ms": idle_ms, "keepalive": False, "ka_time_s": 7200, "pid": 5, "comm": "mysql"}


def run(records, **kw):
    c = Classifier(**kw)
    out = c.feed_many(records)
    return out + c.flush()


@pytest.mark.parametrize("order", ["sent_first", "recv_first"])
def test_peer_reset_paired_across_nat_names_backend_reason(order):
    halves = [backend_sent(1.0), client_recv(1.0002)]
    out = run(halves if order == "sent_first" else halves[::-1])
    assert len(out) == 1
    v = out[0]
    assert (v.cause, v.confidence) == ("peer_reset", "high")
    assert "TCP_ABORT_ON_LINGER" in v.evidence and "paired by time across NAT" in v.evidence
    assert "0.2 ms apart" in v.evidence and "service port 3306" in v.evidence
    # the flow is the one the client socket knows; rows: sent first
    assert (v.src, v.sport, v.dst, v.dport) == (VIP, 3306, CLIENT, 40000)
    assert [e["dir"] for e in v.events] == ["sent", "recv"]
    assert (v.sender_netns, v.receiver_netns) == (DB, CLI)
    assert v.t == T0 + 1.0


def test_refused_connect_paired_across_nat():
    out = run([client_recv(2.0, state="SYN_SENT", idle_ms=None, sport=3307),
               backend_sent(2.0001, has_sock=False, reason="NO_SOCKET", syn=True, sport=3307)])
    assert len(out) == 1
    v = out[0]
    assert v.cause == "no_listener" and f"refused by netns {DB}" in v.evidence
    assert "paired by time across NAT" in v.evidence


@pytest.mark.parametrize("name,records", [
    ("too_far_apart", [backend_sent(1.0), client_recv(1.02)]),
    ("other_service_port", [backend_sent(1.0, sport=5432, dport=51000), client_recv(1.0002, dport=40000)]),
    ("syn_answer_vs_established_socket", [backend_sent(1.0, has_sock=False, reason="NO_SOCKET", syn=True),
                                          client_recv(1.0002)]),
    ("same_namespace", [backend_sent(1.0, netns=CLI), client_recv(1.0002)]),
    ("both_sent", [backend_sent(1.0), backend_sent(1.0002, dport=51001, dst="10.251.1.9")]),
    # two candidates fit: a storm must not mix flows
    ("ambiguous", [backend_sent(1.0), client_recv(1.0001), client_recv(1.0002, dport=40001)]),
])
def test_not_paired(name, records):
    out = run(records)
    assert len(out) == len(records)
    assert not any("across NAT" in v.evidence for v in out)


def test_complete_pair_is_not_touched_by_a_nat_candidate():
    # the client's reset came with its exact-tuple half from the node: a
    # backend reset nearby must not be merged in
    node = {**backend_sent(1.0, has_sock=False, reason="NO_SOCKET"), "netns": NODE, "src": VIP,
            "dst": CLIENT, "dport": 40000}
    out = run([node, client_recv(1.0001), backend_sent(1.0002)])
    assert sorted(len(v.events) for v in out) == [1, 2]
    assert not any("across NAT" in v.evidence for v in out)


def test_nat_pairing_can_be_turned_off():
    out = run([backend_sent(1.0), client_recv(1.0002)], nat_window_s=0)
    assert len(out) == 2


def test_live_equals_batch():
    records = [backend_sent(1.0), client_recv(1.0002), client_recv(3.0, dport=40007),
               client_recv(5.0, state="SYN_SENT", idle_ms=None, sport=3307),
               backend_sent(5.0001, has_sock=False, reason="NO_SOCKET", syn=True, sport=3307)]
    batch = [(v.cause, v.incident, len(v.events)) for v in run(records)]
    live = feed_live(records)
    assert [(v.cause, v.incident, len(v.events)) for v in live] == batch
    assert [n for _, _, n in batch] == [2, 1, 2]


def test_bad_nat_window():
    with pytest.raises(ValueError):
        Classifier(nat_window_s=2.0, pair_window_s=1.0)


def ctx_record(t, *, node_est, node_ipvs):
    ns = lambda inode, name, est, ipvs, nat: {  # noqa: E731
        "netns": inode, "name": name, "nat": nat, "ipvs": ipvs,
        "ct": {"count": 1, "max": 262144, "drop": 0, "early_drop": 0, "invalid": 0, "insert_failed": 0},
        "sysctl": {"nf_conntrack_tcp_timeout_established": est, "tcp_keepalive_time": 7200}}
    return {"kind": "ctx", "t": T0 + t, "namespaces": [
        ns(CLI, "cli", 432000, None, False),
        ns(NODE, "node", node_est, {"tcp": node_ipvs, "tcpfin": 2, "udp": 2}, True),
        ns(DB, "db", 432000, None, False)]}


def test_backend_no_socket_reset_behind_ipvs_is_timeout_mismatch():
    """IPVS still holds the flow, the node's conntrack forgot it: the packet
    reaches the backend un-masqueraded and the backend resets it. The pair
    is across NAT, so the node's tables are on the path, not just the
    backend's (seen on Debian 6.1 in the vm tier)."""
    out = run([ctx_record(0.0, node_est=2, node_ipvs=3),
               backend_sent(2.5, has_sock=False, reason=None, dst=CLIENT, dport=40000),
               client_recv(2.5019, idle_ms=2500)])
    assert len(out) == 1
    v = out[0]
    assert v.cause == "timeout_mismatch", v.evidence
    assert "paired by time across NAT" in v.evidence


def test_backend_reset_across_nat_without_node_mismatch_stays_peer_reset():
    out = run([ctx_record(0.0, node_est=432000, node_ipvs=900),
               backend_sent(2.5, reason="TCP_ABORT_ON_LINGER"),
               client_recv(2.5002, idle_ms=200)])
    assert [v.cause for v in out] == ["peer_reset"]


def test_time_buckets_do_not_keep_decided_incidents():
    """A long storm of resets that pair directly (the NAT index is never
    searched) must not keep every incident alive in the time buckets."""
    c = Classifier()
    decided = 0
    for i in range(20_000):
        t = i * 0.001  # 20 s of resets, 1000/s
        sent = {"kind": "reset", "t": T0 + t, "netns": CLI, "dir": "sent", "family": 4,
                "src": "127.0.0.1", "sport": 9, "dst": "127.0.0.1", "dport": 10_000 + i % 50_000,
                "has_sock": False, "reason": "NO_SOCKET", "syn": True}
        recv = dict(sent, dir="recv", has_sock=True, state="SYN_SENT")
        decided += len(c.feed_many([sent, recv]))
    decided += len(c.tick(T0 + 100))
    assert decided == 20_000
    # at most the buckets of the pairing window, not one per bucket ever seen
    bound = c.pair_window_s / c._nat_w + 4
    assert len(c._buckets) <= bound and len(c._bucket_order) <= bound


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [1, 0, 3, 2], [0, 2, 1, 3], [2, 3, 0, 1]])
def test_simultaneous_resets_pair_by_the_port_masquerade_kept(order):
    """Two pooled connections reset by the backend within a millisecond:
    each half has two candidates by time and service port, but Linux's
    masquerade keeps the client's port where it can, so the other port
    tells them apart (before, the first pairing was ambiguous and the
    halves were mismatched or left alone)."""
    halves = [client_recv(1.0, dport=40000), backend_sent(1.00002, dport=40000),
              client_recv(1.0002, dport=40001), backend_sent(1.00022, dport=40001)]
    out = run([halves[i] for i in order])
    assert len(out) == 2
    for v in out:
        assert [e["dir"] for e in v.events] == ["sent", "recv"]
        assert v.events[0]["dport"] == v.events[1]["dport"] == v.dport
        assert (v.cause, v.confidence) == ("peer_reset", "high")
