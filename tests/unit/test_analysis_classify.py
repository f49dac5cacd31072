"""Every cause and every precedence edge of the classifier, table-driven."""

from __future__ import annotations

import pytest

from rsttrace.analysis.classify import Classifier
from live_feed import feed_live

LB, CLI, SRV = 4026532247, 4026532300, 4026532301
T0 = 1_700_000_000.0


def ns(netns, name, *, est=None, ipvs=None, ka=7200, nat=False, count=10, mx=262144,
       drop=0, early=0, invalid=0, ct=True, be_liberal=0, cw=None, rules=None):
    sc = {"tcp_keepalive_time": ka}
    if est is not None:
        sc["nf_conntrack_tcp_timeout_established"] = est
        sc["nf_conntrack_tcp_be_liberal"] = be_liberal
    if cw is not None:
        sc["nf_conntrack_tcp_timeout_close_wait"] = cw
    extra = {} if rules is None else {"rules": rules}
    return {"netns": netns, "name": name, "nat": nat, "sysctl": sc, **extra,
            "ipvs": None if ipvs is None else {"tcp": ipvs, "tcpfin": 120, "udp": 300},
            "ct": {"count": count, "max": mx, "buckets": 65536, "drop": drop, "early_drop": early,
                   "invalid": invalid, "insert_failed": 0} if ct else None}


def ctx(t, *namespaces):
    return {"kind": "ctx", "t": T0 + t, "namespaces": list(namespaces)}


def sent(t, netns=LB, syn=False, has_sock=False, reason="NO_SOCKET", src="10.96.0.10", sport=3306,
         dst="10.0.1.2", dport=40000, state="", idle_ms=None):
    return {"kind": "reset", "t": T0 + t, "netns": netns, "dir": "sent", "family": 4, "src": src,
            "sport": sport, "dst": dst, "dport": dport, "state": state, "has_sock": has_sock,
            "reason": reason, "syn": syn, "idle_ms": idle_ms}


def abort(t, reason="TCP_STATE", idle_ms=960, **kw):
    """A server's application dropping a connection with SO_LINGER 0 (as
    MariaDB does at wait_timeout): a reset from its socket, in CLOSE."""
    return sent(t, netns=SRV, has_sock=True, reason=reason, state="CLOSE", idle_ms=idle_ms, **kw)


def tw(t, **kw):
    """The reset a server's kernel sends from the TIME_WAIT socket of a
    connection it closed (behind the node's masquerade: its own tuple)."""
    kw = {"netns": SRV, "has_sock": True, "reason": "TCP_TIMEWAIT_SOCKET", "state": "TIME_WAIT",
          "src": "10.0.2.2", "dst": "10.0.2.1", "dport": 51000, **kw}
    return sent(t, **kw)


def drop(t, netns=LB, *, src="10.0.1.2", sport=40000, dst="10.0.2.2", dport=3306, flags=0x02, flow=True,
         family=4, ip_proto=6, protocol=0x800):
    """A netfilter drop as the tracer records it (docs/EVENTS.md); with
    `flow`, of the packet src:sport -> dst:dport (here: the client's SYN
    after the node's DNAT); `ip_proto` other than TCP: an IP packet with no
    ports; without `flow`, as recorded before drops carried their flow."""
    rec = {"kind": "ct_drop", "t": T0 + t, "netns": netns, "reason": "NETFILTER_DROP", "protocol": protocol}
    if flow:
        tcp = ip_proto == 6
        rec.update(family=family, ip_proto=ip_proto, src=src, sport=sport if tcp else None, dst=dst,
                   dport=dport if tcp else None, tcp_flags=flags if tcp else None)
    return rec


def recv(t, netns=CLI, state="ESTABLISHED", idle_ms=500, ka=False, ka_time=7200, src="10.96.0.10",
         sport=3306, dst="10.0.1.2", dport=40000):
    return {"kind": "reset", "t": T0 + t, "netns": netns, "dir": "recv", "family": 4, "src": src,
            "sport": sport, "dst": dst, "dport": dport, "state": state, "has_sock": True,
            "idle_ms": idle_ms, "keepalive": ka, "ka_time_s": ka_time, "pid": 77, "comm": "java"}


def run(records, **kw):
    c = Classifier(**kw)
    out = []
    for r in records:
        out += c.feed(r)
    out += c.flush()
    return out


def lb(**kw):
    kw.setdefault("est", 432000)
    kw.setdefault("nat", True)
    return ns(LB, "lb", **kw)


CASES = {
    # conntrack_full: each kind of evidence, and it beats every other cause
    "full_log_line": ([ctx(0, lb()), {"kind": "ct_full", "t": T0 + 5, "netns": LB, "text": "table full"},
                       sent(6), recv(6.001, idle_ms=900_000)], "conntrack_full", "high"),
    "full_count_95pct": ([ctx(0, lb(count=96, mx=100)), sent(6), recv(6.001)], "conntrack_full", "high"),
    "full_drop_rose": ([ctx(0, lb(drop=3)), ctx(5, lb(drop=9)), sent(6), recv(6.001)], "conntrack_full", "medium"),
    "full_early_drop_rose": ([ctx(0, lb(early=0)), ctx(5, lb(early=2)), sent(6, syn=True)],
                             "conntrack_full", "medium"),
    # netfilter drops alone are no table trouble (any DROP rule makes them)
    "full_not_from_netfilter_drops_only": ([ctx(0, lb()), drop(5, flow=False), sent(6)], "unknown", "low"),
    "full_not_from_drops_on_unknown_path": ([ctx(0, lb()), drop(5, flow=False), recv(6, idle_ms=100)],
                                            "peer_reset", "medium"),
    "full_drop_rose_outside_window": ([ctx(0, lb(drop=3)), ctx(1, lb(drop=9)), ctx(15, lb(drop=9)),
                                       recv(25, idle_ms=100)], "peer_reset", "medium"),
    "full_other_netns_on_known_path": ([ctx(0, lb(), ns(SRV, "srv", drop=1)), ctx(5, lb(), ns(SRV, "srv", drop=5)),
                                        sent(6), recv(6.001)], "peer_reset", "high"),
    "full_any_netns_when_path_unknown": ([ctx(0, ns(SRV, "srv", drop=1)), ctx(5, ns(SRV, "srv", drop=5)),
                                          recv(6)], "conntrack_full", "medium"),
    # a line naming no namespace (older kernels) is a guess: medium, and
    # ignored when the path's own counters, read after the reset, show nothing
    "full_log_line_without_netns": ([ctx(0, lb()), {"kind": "ct_full", "t": T0 + 5, "netns": None, "text": "x"},
                                     sent(6)], "conntrack_full", "medium"),
    "full_log_line_without_netns_counters_quiet": (
        [ctx(0, lb()), {"kind": "ct_full", "t": T0 + 5, "netns": None, "text": "x"}, sent(6), ctx(6.5, lb())],
        "unknown", "low"),
    # trouble elsewhere does not relabel a reset whose path is known
    "full_elsewhere_not_on_receiver_path": (
        [ctx(0, lb(drop=3), ns(CLI, "cli")), ctx(5, lb(drop=9), ns(CLI, "cli")), recv(6, idle_ms=100)],
        "peer_reset", "medium"),
    "full_line_elsewhere_not_on_receiver_path": (
        [ctx(0, lb(), ns(CLI, "cli")), {"kind": "ct_full", "t": T0 + 5, "netns": LB, "text": "table full"},
         ctx(5.5, lb(drop=16, count=6, mx=6), ns(CLI, "cli")), recv(6, idle_ms=100)], "peer_reset", "medium"),
    "full_line_elsewhere_not_on_sender_path": (
        [ctx(0, lb(), ns(SRV, "srv")), {"kind": "ct_full", "t": T0 + 5, "netns": SRV, "text": "table full"},
         sent(6, syn=True)], "no_listener", "high"),
    "full_on_receiver_own_netns": (
        [ctx(0, ns(CLI, "cli", drop=1)), ctx(5, ns(CLI, "cli", drop=4)), recv(6, idle_ms=100)],
        "conntrack_full", "medium"),
    "full_line_on_receiver_own_netns": (
        [ctx(0, ns(CLI, "cli")), {"kind": "ct_full", "t": T0 + 5, "netns": CLI, "text": "table full"},
         recv(6, idle_ms=100)], "conntrack_full", "high"),
    # conntrack_invalid
    "invalid_fresh_flow": ([ctx(0, lb(est=4, invalid=1)), ctx(5, lb(est=4, invalid=2)), sent(6),
                            recv(6.001, idle_ms=200)], "conntrack_invalid", "high"),
    "invalid_counter_after_reset_within_pair_window": (
        [ctx(0, lb(est=4, invalid=1)), sent(6), recv(6.001, idle_ms=200), ctx(6.5, lb(est=4, invalid=2))],
        "conntrack_invalid", "high"),
    "invalid_sender_only_idle_unknown": ([ctx(0, lb(invalid=1)), ctx(5, lb(invalid=4)), sent(6)],
                                         "conntrack_invalid", "medium"),
    # precedence edge: idle past a timeout with invalid rising is keepalive
    "idle_flow_with_invalid_rising_is_keepalive": (
        [ctx(0, lb(est=4, invalid=1)), ctx(5, lb(est=4, invalid=2)), sent(6), recv(6.001, idle_ms=7000)],
        "keepalive", "high"),
    "invalid_needs_no_socket_sender": ([ctx(0, lb(invalid=1)), ctx(5, lb(invalid=4)),
                                        sent(6, has_sock=True, reason="TCP_ABORT_ON_CLOSE")], "unknown", "low"),
    "invalid_not_for_syn": ([ctx(0, lb(invalid=1)), ctx(5, lb(invalid=4)), sent(6, syn=True)],
                            "no_listener", "high"),
    # timeout_mismatch: conntrack forgot, IPVS still held
    "mismatch": ([ctx(0, lb(est=600, ipvs=900)), sent(6), recv(6.001, idle_ms=700_000)],
                 "timeout_mismatch", "high"),
    "mismatch_beats_invalid_when_idle": ([ctx(0, lb(est=600, ipvs=900, invalid=1)),
                                          ctx(5, lb(est=600, ipvs=900, invalid=3)), sent(6),
                                          recv(6.001, idle_ms=700_000)], "timeout_mismatch", "high"),
    "idle_past_both_tables_is_keepalive": ([ctx(0, lb(est=600, ipvs=900)), sent(6), recv(6.001, idle_ms=912_000)],
                                           "keepalive", "high"),
    "no_mismatch_when_conntrack_longer": ([ctx(0, lb(est=86400, ipvs=900)), sent(6), recv(6.001, idle_ms=912_000)],
                                          "keepalive", "high"),
    "mismatch_guessed_path_is_medium": ([ctx(0, lb(est=600, ipvs=900)), recv(6.001, idle_ms=700_000)],
                                        "timeout_mismatch", "medium"),
    # keepalive
    "keepalive_off": ([ctx(0, lb(ipvs=900)), sent(6), recv(6.001, idle_ms=912_000)], "keepalive", "high"),
    "keepalive_on_but_slower": ([ctx(0, lb(ipvs=900)), sent(6), recv(6.001, idle_ms=912_000, ka=True, ka_time=7200)],
                                "keepalive", "high"),
    "keepalive_equal_to_timeout": ([ctx(0, lb(ipvs=900)), sent(6), recv(6.001, idle_ms=912_000, ka=True, ka_time=900)],
                                   "keepalive", "high"),
    "keepalive_faster_is_not_keepalive": ([ctx(0, lb(ipvs=900)), sent(6),
                                           recv(6.001, idle_ms=912_000, ka=True, ka_time=300)], "peer_reset", "high"),
    "declared_middlebox": ([recv(6, idle_ms=400_000)], "keepalive", "medium", {"nlb": 350.0}),
    "declared_middlebox_not_reached": ([recv(6, idle_ms=300_000)], "peer_reset", "medium", {"nlb": 350.0}),
    "declared_middlebox_smaller_than_ipvs": ([ctx(0, lb(ipvs=900)), sent(6), recv(6.001, idle_ms=400_000)],
                                             "keepalive", "medium", {"nlb": 350.0}),
    "ipvs_expiry_without_socket": ([ctx(0, lb(ipvs=900)),
                                    {"kind": "ipvs_expire", "t": T0 + 2, "netns": LB, "protocol": 6,
                                     "client": "10.0.1.2", "cport": 40000, "vaddr": "10.96.0.10", "vport": 3306,
                                     "daddr": "10.0.2.2", "dport": 3306, "state": "ESTABLISHED"}, sent(6)],
                                   "keepalive", "medium"),
    # no_listener
    "refused_recv_syn_sent": ([recv(1, state="SYN_SENT", idle_ms=None)], "no_listener", "high"),
    "refused_sent_syn": ([sent(1, syn=True)], "no_listener", "high"),
    # peer_closed: the peer's FIN came first
    "closed_local_timewait_sender": ([tw(6), recv(6.001, state="CLOSE_WAIT", idle_ms=3000)], "peer_closed", "high"),
    "closed_remote_sender": ([recv(1, state="CLOSE_WAIT", idle_ms=3000)], "peer_closed", "medium"),
    "closed_last_ack": ([recv(1, state="LAST_ACK", idle_ms=3000)], "peer_closed", "medium"),
    "closed_same_tuple_sender": ([sent(1, netns=SRV, has_sock=True, state="FIN_WAIT2", reason="TCP_TIMEWAIT_SOCKET"),
                                  recv(1.001, state="CLOSE_WAIT", idle_ms=3000)], "peer_closed", "high"),
    # the table that forgot first decides: the FIN passed the node, so the
    # server closed first, however long the flow idled in the node's eyes
    "closed_flow_idle_past_node_timeout": ([ctx(0, lb(est=2)), tw(6), recv(6.001, state="CLOSE_WAIT", idle_ms=5000)],
                                           "peer_closed", "high"),
    "closed_then_node_forgot_after_fin": ([ctx(0, lb(est=2, cw=60)), sent(6),
                                           recv(6.001, state="CLOSE_WAIT", idle_ms=90_000)], "peer_closed", "high"),
    "node_forgot_before_fin": ([ctx(0, lb(est=2, cw=60)), sent(6), recv(6.001, state="CLOSE_WAIT", idle_ms=5000)],
                               "keepalive", "high"),
    "closed_node_close_wait_unknown": ([ctx(0, lb(est=432000)), sent(6), recv(6.001, state="CLOSE_WAIT", idle_ms=5000)],
                                       "peer_closed", "medium"),
    "closed_beats_declared_middlebox": ([recv(6, state="CLOSE_WAIT", idle_ms=400_000)], "peer_closed", "medium",
                                        {"nlb": 350.0}),
    # ... or its application dropped the idle connection with a reset (MariaDB's
    # wait_timeout, a proxy's nolinger idle limit)
    "idle_connection_aborted": ([abort(6), recv(6.001, idle_ms=1004)], "peer_closed", "medium"),
    "idle_connection_aborted_linger": ([abort(6, reason="TCP_ABORT_ON_LINGER", idle_ms=400_000),
                                        recv(6.001, idle_ms=400_100)], "peer_closed", "medium"),
    "active_connection_aborted": ([abort(6, idle_ms=10), recv(6.001, idle_ms=200)], "peer_reset", "high"),
    "aborted_with_unread_data_is_no_idle_timeout": ([abort(6, reason="TCP_ABORT_ON_CLOSE", idle_ms=5000),
                                                     recv(6.001, idle_ms=5000)], "peer_reset", "high"),
    "abort_without_kernel_reason": ([abort(6, reason=None, idle_ms=5000), recv(6.001, idle_ms=5000)],
                                    "peer_reset", "medium"),
    # firewall_reject: a reset no TCP stack here sent, its packet dropped by netfilter
    "reject_syn_tied_by_flow": ([ctx(0, lb()), drop(6), recv(6.0005, state="SYN_SENT", idle_ms=None)],
                                "firewall_reject", "high"),
    "reject_established_tied_by_flow": ([ctx(0, lb()), drop(6, flags=0x18), recv(6.0005, idle_ms=4000)],
                                        "firewall_reject", "high"),
    "reject_drop_after_reset_record": ([ctx(0, lb()), recv(6, state="SYN_SENT", idle_ms=None), drop(6.0004)],
                                       "firewall_reject", "high"),
    "reject_in_receiving_netns": ([ctx(0, ns(CLI, "cli")), drop(6, netns=CLI, dst="10.96.0.10"),
                                   recv(6.0005, state="SYN_SENT", idle_ms=None)], "firewall_reject", "high"),
    "reject_dnat_port_rewritten": ([ctx(0, lb()), drop(6, dport=8080), recv(6.0005, state="SYN_SENT", idle_ms=None)],
                                   "firewall_reject", "high"),
    "drop_of_another_flow_elsewhere": ([ctx(0, lb(), ns(SRV, "srv")), drop(6, netns=SRV, sport=40001, dport=5432),
                                        recv(6.0005, state="SYN_SENT", idle_ms=None)], "no_listener", "high"),
    "drop_of_another_flow_same_netns_same_moment": ([ctx(0, lb()), drop(6, sport=40001, dport=5432),
                                                     recv(6.0005, state="SYN_SENT", idle_ms=None)],
                                                    "no_listener", "high"),
    "drop_of_another_client_same_moment": ([ctx(0, lb()), drop(6, src="10.0.1.3"),
                                            recv(6.0005, state="SYN_SENT", idle_ms=None)], "no_listener", "high"),
    "udp_drop_same_moment_is_no_reset_trigger": ([ctx(0, lb()), drop(6, ip_proto=17),
                                                  recv(6.001, state="SYN_SENT", idle_ms=None)],
                                                 "no_listener", "high"),
    "arp_drop_same_moment_is_no_reset_trigger": ([ctx(0, lb()), drop(6, flow=False, protocol=0x0806),
                                                  recv(6.001, state="SYN_SENT", idle_ms=None)],
                                                 "no_listener", "high"),
    # the backend's reply dropped on its way back (the rule answers the backend)
    "reject_of_the_reply_direction": ([ctx(0, lb()), drop(6, src="10.0.2.2", sport=3306, dst="10.0.1.2",
                                                          dport=40000, flags=0x12),
                                       recv(6.0005, netns=SRV, state="SYN_RECV", idle_ms=None, src="10.0.1.2",
                                            sport=40000, dst="10.0.2.2", dport=3306)],
                                      "firewall_reject", "high"),
    # a dual-stack socket's reset (AF_INET6, IPv4-mapped addresses shown as
    # IPv4) and the IPv4 packet netfilter dropped
    "reject_of_a_v4_mapped_socket": ([ctx(0, lb()), drop(6),
                                      {**recv(6.0005, state="SYN_SENT", idle_ms=None), "family": 6}],
                                     "firewall_reject", "high"),
    "reject_ipv6_tied_by_flow": ([ctx(0, lb()), drop(6, family=6, src="fd00:1::2", dst="fd00:2::2"),
                                  {**recv(6.0005, state="SYN_SENT", idle_ms=None, src="fd00:96::10",
                                          dst="fd00:1::2"), "family": 6}],
                                 "firewall_reject", "high"),
    "drop_of_flow_too_long_before": ([ctx(0, lb()), drop(5), recv(6, state="SYN_SENT", idle_ms=None)],
                                     "no_listener", "high"),
    "reject_by_time_without_flow": ([ctx(0, lb()), drop(6, flow=False), recv(6.001, state="SYN_SENT", idle_ms=None)],
                                    "firewall_reject", "medium"),
    "drop_without_flow_not_at_that_moment": ([ctx(0, lb()), drop(5.9, flow=False),
                                              recv(6, state="SYN_SENT", idle_ms=None)], "no_listener", "high"),
    "reject_needs_no_tcp_sender": ([ctx(0, lb()), drop(6), sent(6.0004, syn=True)], "no_listener", "high"),
    "drop_in_full_table_is_conntrack_full": ([ctx(0, lb(count=96, mx=100)), drop(6),
                                              recv(6.0005, state="SYN_SENT", idle_ms=None)], "conntrack_full", "high"),
    # peer_reset / unknown
    "peer_local_reason": ([sent(1, netns=SRV, has_sock=True, reason="TCP_ABORT_ON_CLOSE"), recv(1.001)],
                          "peer_reset", "high"),
    "peer_remote": ([recv(1)], "peer_reset", "medium"),
    "unknown_sent_only": ([sent(1)], "unknown", "low"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cause(name):
    """Each cause and its edges. firewall_reject: a rule in the receiving
    namespace counts as one on the node; a drop of another flow, or one
    not at that moment, does not. peer_closed: CLOSE_WAIT/LAST_ACK, unless
    the node's table forgot the flow before the FIN (idle since the FIN
    below its close_wait timeout)."""
    records, cause, conf, *timeouts = CASES[name]
    out = run(records, idle_timeouts=timeouts[0] if timeouts else None)
    assert len(out) == 1, [v.cause for v in out]
    v = out[0]
    assert (v.cause, v.confidence) == (cause, conf), v.evidence
    assert v.evidence


def test_evidence_has_numbers():
    v = run([ctx(0, lb(ipvs=900)), sent(6), recv(6.001, idle_ms=912_000)])[0]
    assert v.evidence.startswith("idle 912 s >= ipvs tcp timeout 900 s")
    assert "SO_KEEPALIVE off" in v.evidence


def test_peer_names_sender_reason():
    v = run([sent(1, netns=SRV, has_sock=True, reason="TCP_ABORT_ON_LINGER"), recv(1.001)])[0]
    assert "TCP_ABORT_ON_LINGER" in v.evidence and "SO_LINGER" in v.evidence


def test_pairing_makes_one_incident_sent_first():
    v = run([ctx(0, lb(ipvs=900)), recv(6.0), sent(6.001)])[0]
    assert [e["dir"] for e in v.events] == ["sent", "recv"]
    assert (v.sender_netns, v.receiver_netns) == (LB, CLI)
    assert (v.src, v.sport, v.dst, v.dport) == ("10.96.0.10", 3306, "10.0.1.2", 40000)


def test_outside_pair_window_stands_alone():
    out = run([sent(1), recv(3)], pair_window_s=1.0)
    assert len(out) == 2 and out[0].incident != out[1].incident


def test_other_tuple_not_paired():
    out = run([sent(1), recv(1.001, dport=40001)])
    assert len(out) == 2


def test_live_finalises_after_pair_window_only():
    c = Classifier(pair_window_s=1.0)
    assert c.feed(sent(1)) == []
    assert c.feed(recv(1.5)) == []
    assert c.tick(T0 + 1.9) == []
    out = c.tick(T0 + 2.1)
    assert len(out) == 1 and len(out[0].events) == 2
    assert c.flush() == []


def test_pending_is_bounded():
    c = Classifier(max_pending=10)
    out = []
    for i in range(50):
        out += c.feed(recv(1, dport=20000 + i))
    assert len(out) == 40 and len(c._pending) == 10
    assert len(out + c.flush()) == 50


def test_a_tuple_reused_within_the_pair_window_is_a_new_incident():
    # a storm's client comes round to the same ephemeral port within a
    # second: each refused connect is its own reset, its own incident
    out = run([sent(1.0, syn=True), recv(1.0001, state="SYN_SENT"),
               sent(1.2, syn=True), recv(1.2001, state="SYN_SENT"),
               sent(1.4, syn=True), recv(1.4001, state="SYN_SENT")])
    assert len(out) == 3
    assert [[e["dir"] for e in v.events] for v in out] == [["sent", "recv"]] * 3
    assert [v.t for v in out] == [T0 + 1.0, T0 + 1.2, T0 + 1.4]
    assert all(v.cause == "no_listener" for v in out)


def test_one_reset_seen_in_two_namespaces_stays_one_incident():
    # the same tuple sent from two namespaces (two hops) is one reset
    v = run([sent(1.0, netns=SRV, has_sock=True, reason="TCP_ABORT_ON_CLOSE"), sent(1.0001),
             recv(1.0002)])
    assert len(v) == 1 and len(v[0].events) == 3


def test_events_held_stay_bounded_when_tuples_come_round():
    # 40,000 resets over 8 s on 500 tuples: what waits for its pair
    # window is one second's resets at most, however many come on a tuple
    c = Classifier(pair_window_s=1.0)
    decided, held = 0, 0
    for i in range(40_000):
        t = i * 0.0002
        decided += len(c.feed(sent(t, syn=True, dport=20000 + i % 500)))
        decided += len(c.feed(recv(t + 0.00005, state="SYN_SENT", dport=20000 + i % 500)))
        held = max(held, sum(len(x.sent) + len(x.recv) for x in c._pending.values()))
    decided += len(c.flush())
    assert decided == 40_000
    assert held <= 2 * 500


def test_context_history_is_trimmed():
    c = Classifier(window_s=10.0)
    for i in range(1000):
        c.feed(ctx(i, lb(drop=i)))
    slot = c.context._ns[LB]
    assert len(slot.times) <= 14


def test_live_equals_batch_in_chunks():
    records = [ctx(0, lb(est=4, invalid=1)), sent(1), recv(1.001, idle_ms=7000), ctx(2, lb(est=4, invalid=2)),
               sent(3), recv(3.001, idle_ms=100), recv(3.5, state="SYN_SENT", dport=1), ctx(20, lb(est=4))]
    batch = [(v.cause, v.incident) for v in run(records)]
    live = feed_live(records)
    assert [(v.cause, v.incident) for v in live] == batch


def test_bad_options():
    with pytest.raises(ValueError):
        Classifier(window_s=0)


def _rule(handle, text, packets=None, chain="forward"):
    return {"source": "nft", "family": "ip", "table": "rtlab", "chain": chain, "handle": handle,
            "text": text, "packets": packets}


R3306 = _rule(7, "ip daddr 10.0.2.2 tcp dport 3306 reject with tcp reset")
R5432 = _rule(8, "tcp dport 5432 reject with tcp reset")
R_ANY = _rule(9, "meta l4proto tcp reject with tcp reset", chain="input")


@pytest.mark.parametrize("rules, named, says", [
    ([R5432, R3306], "nft ip rtlab forward handle 7", "`ip daddr 10.0.2.2 tcp dport 3306 reject with tcp reset`"),
    ([R_ANY], "nft ip rtlab input handle 9", "`meta l4proto tcp reject with tcp reset`"),
    # a counter that stayed at 0 did not answer this packet
    ([{**R3306, "packets": 0}, {**R_ANY, "packets": 3}], "nft ip rtlab input handle 9", "handle 9"),
    ([R_ANY, {**R_ANY, "handle": 10}], None, "one of 2 rules that reset there"),
    ([], None, "no rule answering with a TCP reset"),
    (None, None, "rules were not read"),
])
def test_firewall_reject_names_the_rule(rules, named, says):
    """The rules are read after the namespace's drop: a snapshot within the
    pairing window carries them."""
    records = [ctx(0, lb()), drop(6), recv(6.0005, state="SYN_SENT", idle_ms=None), ctx(6.3, lb(rules=rules))]
    (v,) = run(records)
    assert v.cause == "firewall_reject" and says in v.evidence, v.evidence
    assert "netns lb (4026532247)" in v.evidence and "10.0.1.2:40000 -> 10.0.2.2:3306" in v.evidence
    (f,) = v.fixes
    if named:
        assert f.key == named
        assert f.command == f"ip netns exec lb nft delete rule ip rtlab {named.split()[3]} handle {named.split()[-1]}"
    else:
        assert f.command == "ip netns exec lb nft -a list ruleset | grep -n reject"
    assert f.tradeoff
