"""Reports over several nodes' recordings (analysis/fleet.py): the pure join
decision, table-driven, then whole reports of synthetic recordings."""

from __future__ import annotations

import csv
import io
import json

import pytest

from rsttrace.analysis import fleet
from rsttrace.analysis.fleet import Candidate, match
from rsttrace.analysis.report import report_fleet, report_recording, write_fleet_report
from rsttrace.cli import main

T0 = 1_700_000_000.0
CLI_NS, NODE_NS = 4026532300, 4026532247
VIP, CLIENT, BACKEND = "10.96.0.10", "10.251.0.2", "10.251.1.2"


def recv(t=0.0, *, src=VIP, sport=3306, dst=CLIENT, dport=40000, state="ESTABLISHED", idle_ms=4000):
    return {"kind": "reset", "t": T0 + t, "netns": CLI_NS, "dir": "recv", "family": 4, "src": src,
            "sport": sport, "dst": dst, "dport": dport, "state": state, "state_raw": 1, "has_sock": True,
            "idle_ms": idle_ms, "keepalive": False, "ka_time_s": 7200, "pid": 5, "comm": "mysql"}


def sent(t=0.0, *, src=VIP, sport=3306, dst=CLIENT, dport=40000, syn=False):
    return {"kind": "reset", "t": T0 + t, "netns": NODE_NS, "dir": "sent", "family": 4, "src": src,
            "sport": sport, "dst": dst, "dport": dport, "state": "", "state_raw": 0, "has_sock": False,
            "reason": "NO_SOCKET", "syn": syn}


def cand(node="b", t=0.0, nat=False, **kw):
    return Candidate(node, T0 + t, sent(t, **kw), nat)


# ---- the join decision --------------------------------------------------------

CASES = [
    # (name, candidates, expiries, tolerance, expected node or None, how)
    ("same flow", [cand()], [], 0.25, "b", "flow"),
    ("same flow, clock 0.2 s apart", [cand(t=0.2)], [], 0.25, "b", "flow"),
    ("beyond the tolerance", [cand(t=0.3)], [], 0.25, None, "none"),
    ("on the receiver's own node", [cand(node="a")], [], 0.25, None, "none"),
    ("another client port", [cand(dport=40001)], [], 0.25, None, "none"),
    ("another service port", [cand(sport=3307)], [], 0.25, None, "none"),
    ("through NAT the sender's node has", [cand(nat=True, src=BACKEND)], [], 0.25, "b", "nat"),
    ("an address rewritten, no NAT recorded", [cand(src=BACKEND)], [], 0.25, None, "none"),
    ("two senders of the flow", [cand(), cand(node="c")], [], 0.25, None, "ambiguous"),
    ("the flow beats NAT", [cand(), cand(node="c", nat=True, src=BACKEND)], [], 0.25, "b", "flow"),
    ("two through NAT", [cand(nat=True, src=BACKEND), cand(node="c", nat=True, src="10.0.0.9")], [], 0.25,
     None, "ambiguous"),
    ("a refused SYN is no reset of an established flow", [cand(syn=True)], [], 0.25, None, "none"),
    ("an IPVS expiry before it", [], [Candidate("b", T0 - 300, {})], 0.25, "b", "ipvs"),
    ("an IPVS expiry after it", [], [Candidate("b", T0 + 1, {})], 0.25, None, "none"),
    ("two nodes' expiries", [], [Candidate("b", T0 - 3, {}), Candidate("c", T0 - 2, {})], 0.25,
     None, "ambiguous"),
    ("a sender beats an expiry", [cand()], [Candidate("c", T0 - 3, {})], 0.25, "b", "flow"),
    ("a netfilter drop on one node", [], [Candidate("b", T0 + 0.1, {"kind": "ct_drop"})], 0.25, "b", "drop"),
    ("two drops on one node", [], [Candidate("b", T0 + 0.1, {"kind": "ct_drop"}),
                                   Candidate("b", T0 - 0.1, {"kind": "ct_drop"})], 0.25, "b", "drop"),
    ("drops on two nodes", [], [Candidate("b", T0, {"kind": "ct_drop"}),
                                Candidate("c", T0, {"kind": "ct_drop"})], 0.25, None, "ambiguous"),
]


@pytest.mark.parametrize("name,cands,exps,tol,node,how", CASES, ids=[c[0] for c in CASES])
def test_match(name, cands, exps, tol, node, how):
    c, got = match(recv(), "a", cands, exps, tol)
    assert (c.node if c else None, got) == (node, how)


def test_a_refused_syn_joins_a_socket_in_syn_sent():
    c, how = match(recv(state="SYN_SENT", idle_ms=None), "a", [cand(syn=True)], [], 0.25)
    assert c is not None and how == "flow"


# ---- whole reports ---------------------------------------------------------------

def write(path, node, records, t=T0 - 10, **header):
    head = {"kind": "header", "schema": 1, "t": t, "host": f"host-{node}", "node": node,
            "netns_names": {}, **header}
    lines = [head, *records, {"kind": "totals", "t": T0 + 60, "events": len(records), "lost": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def node_ctx(t=-5.0, est=2):
    return {"kind": "ctx", "t": T0 + t, "namespaces": [
        {"netns": NODE_NS, "name": "router", "nat": True,
         "sysctl": {"nf_conntrack_tcp_timeout_established": est},
         "ct": {"count": 10, "max": 1000, "drop": 0, "early_drop": 0, "invalid": 0}}]}


def cli_ctx(t=-5.0):
    return {"kind": "ctx", "t": T0 + t, "namespaces": [{"netns": CLI_NS, "name": "cli"}]}


def pair(tmp_path, shift=0.0, b_records=None):
    a = write(tmp_path / "a.jsonl", "node-a", [cli_ctx(), recv(0.001)])
    b_recs = b_records if b_records is not None else [node_ctx(), sent(0.0)]
    b = write(tmp_path / "b.jsonl", "node-b", [dict(r, t=r["t"] + shift) for r in b_recs])
    return a, b


def rows(df):
    return [dict(zip(df.columns, r)) for r in df.itertuples(index=False)]


def test_each_node_alone_cannot_tell(tmp_path):
    a, b = pair(tmp_path)
    (ra,), _ = rows(report_recording(a)[0]), None
    assert ra["cause"] == "peer_reset" and "sender not on this host" in ra["evidence"]
    assert ra["node"] == "node-a" and ra["peer_node"] is None
    (rb,) = rows(report_recording(b)[0])
    assert rb["cause"] == "unknown"


@pytest.mark.parametrize("shift", [0.0, 0.2, -0.2])
def test_the_received_reset_takes_the_sender_nodes_cause(tmp_path, shift):
    a, b = pair(tmp_path, shift)
    df, summary = report_fleet([a, b])
    got = rows(df)
    assert [(r["direction"], r["node"], r["peer_node"]) for r in got] == \
        [("sent", "node-b", "node-a"), ("recv", "node-a", "node-b")]
    s, r = got
    # keepalive: the client's idle (node A's socket) against the router's
    # conntrack timeout (node B's context)
    assert s["cause"] == r["cause"] == "keepalive" and r["confidence"] == "high"
    assert "conntrack established timeout 2 s in netns router" in r["evidence"]
    assert "joined across nodes: reset sent on node-b, received on node-a" in r["evidence"]
    assert s["incident"] == r["incident"]
    # the received row keeps its own node's namespace and time
    assert r["netns"] == CLI_NS and r["receiver_netns"] == CLI_NS and r["netns_name"] == "cli"
    assert "ip netns exec cli sysctl -w net.ipv4.tcp_keepalive_time" in r["fix"]
    assert "node-b -> node-a" in summary.text and not summary.warnings
    assert ("node_pair", "node-b -> node-a", 1, "keepalive 1") in summary.rows


def test_clocks_beyond_the_tolerance_are_not_joined_and_said(tmp_path):
    a, b = pair(tmp_path, shift=2.0)
    df, summary = report_fleet([a, b])
    got = rows(df)
    assert [r["peer_node"] for r in got] == [None, None]
    assert {r["cause"] for r in got} == {"peer_reset", "unknown"}
    (w,) = summary.warnings
    assert "nodes node-b and node-a: 1 resets match by their flow only 1.999 s apart" in w
    assert "rerun with --clock-tolerance 3" in w
    df2, summary2 = report_fleet([a, b], tolerance_s=2.5)
    assert [r["peer_node"] for r in rows(df2)] == ["node-a", "node-b"]
    assert not summary2.warnings


def test_the_same_node_twice_is_read_once(tmp_path):
    a, b = pair(tmp_path)
    a2 = tmp_path / "a2.jsonl"
    a2.write_bytes(open(a, "rb").read())
    df, summary = report_fleet([a, b, str(a2)])
    assert len(df) == 2
    (w,) = summary.warnings
    assert w.startswith("node node-a: ") and "overlaps" in w and "its 1 events" in w and "skipped" in w


def test_rotations_of_one_node_are_one_stream(tmp_path):
    a = write(tmp_path / "a1.jsonl", "node-a", [cli_ctx(), recv(0.001)])
    later = [cli_ctx(), dict(recv(30.0), dport=40002)]
    a2 = write(tmp_path / "a2.jsonl", "node-a", later, t=T0 + 20)
    df, summary = report_fleet([a2, a])
    assert list(df["dport"]) == [40000, 40002] and not summary.warnings


def test_two_senders_fit_none_is_chosen(tmp_path):
    a, b = pair(tmp_path)
    c = write(tmp_path / "c.jsonl", "node-c", [node_ctx(), sent(0.002)])
    df, summary = report_fleet([a, b, c])
    assert all(r["peer_node"] is None for r in rows(df))
    assert any("fit more than one sender" in w for w in summary.warnings)


def test_through_the_sender_nodes_nat(tmp_path):
    a, b = pair(tmp_path, b_records=[node_ctx(), dict(sent(0.0), src=BACKEND, dst="10.251.1.1")])
    got = rows(report_fleet([a, b])[0])
    assert [r["peer_node"] for r in got] == ["node-a", "node-b"]
    assert got[1]["cause"] == "keepalive" and "through its NAT" in got[1]["evidence"]
    assert "paired across NAT (service port 3306)" in got[1]["evidence"] and "ms apart" not in got[1]["evidence"]


def test_an_ipvs_expiry_on_the_sender_node(tmp_path):
    exp = {"kind": "ipvs_expire", "t": T0 - 100, "netns": NODE_NS, "protocol": 6, "client": CLIENT,
           "cport": 40000, "vaddr": VIP, "vport": 3306, "daddr": BACKEND, "dport": 3306}
    ctx = node_ctx(est=1000)
    ctx["namespaces"][0]["ipvs"] = {"tcp": 3}
    a, b = pair(tmp_path, b_records=[dict(ctx, t=T0 - 150), exp, dict(ctx, t=T0 - 1)])
    got = rows(report_fleet([a, b])[0])
    (r,) = got
    assert r["peer_node"] == "node-b" and "IPVS expiry on node-b" in r["evidence"]
    assert r["cause"] in ("keepalive", "timeout_mismatch")


def test_cli_writes_one_csv_with_node_columns(tmp_path, capsys):
    a, b = pair(tmp_path)
    out = tmp_path / "f.csv"
    assert main(["report", a, b, "-o", str(out)]) == 0
    got = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["node"], r["peer_node"]) for r in got] == [("node-b", "node-a"), ("node-a", "node-b")]
    assert main(["report", str(tmp_path), "--clock-tolerance", "0.1"]) == 0
    assert "resets per node" in capsys.readouterr().out


def test_cli_refusals(tmp_path, capsys):
    a, _ = pair(tmp_path)
    assert main(["report", a, "--clock-tolerance", "1"]) == 2
    assert "more than one" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no recordings" in capsys.readouterr().err


def test_streamed_csv_equals_the_frame(tmp_path):
    a, b = pair(tmp_path)
    buf = io.StringIO()
    n, _ = write_fleet_report([a, b], buf, writer_process=False)
    assert n == 2
    got = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [r["cause"] for r in got] == ["keepalive", "keepalive"]
    assert fleet.CLOCK_TOLERANCE_S == 0.25


def test_merged_in_time_order_and_a_node_that_ends_early(tmp_path):
    a = write(tmp_path / "a.jsonl", "node-a", [cli_ctx()] + [dict(recv(k * 10.0), dport=41000 + k)
                                                         for k in range(3)])
    b = write(tmp_path / "b.jsonl", "node-b", [node_ctx()] + [dict(sent(k * 10.0 + 5), dport=42000 + k)
                                                          for k in range(30)])
    df, summary = report_fleet([a, b])
    times = list(df["time"])
    assert times == sorted(times) and len(times) == 33
    assert list(df["node"][:4]) == ["node-a", "node-b", "node-a", "node-b"]
    assert list(df["incident"]) == list(range(1, 34))


@pytest.mark.parametrize("step,warned", [(0.0, False), (5.0, True)])
def test_a_wall_clock_step_within_one_boot_is_said(tmp_path, step, warned):
    a = write(tmp_path / "a1.jsonl", "node-a", [cli_ctx(), recv(0.001)], boot_id="x", monotonic=100.0)
    # the second file began 20 s of monotonic time later; its wall clock says 20 + step
    a2 = write(tmp_path / "a2.jsonl", "node-a", [dict(recv(30.0), dport=40002)], t=T0 + 10 + step,
               boot_id="x", monotonic=120.0)
    _, summary = report_fleet([a, a2])
    got = [w for w in summary.warnings if "wall clock moved" in w]
    assert bool(got) == warned
    if warned:
        assert "node node-a: the wall clock moved +5.000 s between" in got[0]


def test_one_hosts_resets_split_over_two_nodes_get_the_same_causes(tmp_path):
    # bench/bench_fleet.py's split: the client namespace's records as one
    # node, the router's as another; every paired reset must be joined back
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    from bench_fleet import split
    from bench_report import generate
    one, a, b = tmp_path / "one.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    generate(one, 3000)
    split(one, a, b)
    single, _ = report_recording(one)
    joint, summary = report_fleet([str(a), str(b)])
    key = ["time", "direction", "src", "dst", "dport"]
    single, joint = single.sort_values(key), joint.sort_values(key)
    assert list(single["cause"]) == list(joint["cause"]) and len(joint) == 3000
    paired = single["incident"].duplicated(keep=False).sum()
    assert (joint["peer_node"].notna()).sum() == paired > 0
    assert not summary.warnings


def test_conntrack_trouble_is_said_per_node(tmp_path):
    later = node_ctx(t=1.0)
    later["namespaces"][0]["ct"] = dict(later["namespaces"][0]["ct"], drop=7)
    a, b = pair(tmp_path, b_records=[node_ctx(), sent(0.0), later])
    _, summary = report_fleet([a, b])
    text = summary.text
    assert "conntrack trouble" in text and "  node node-b:" in text
    assert "drop +7" in text.split("  node node-b:")[1]
    assert ("conntrack", "netns router (4026532247)", 7, "drop") in summary.rows


def test_overlapping_rotations_skip_what_the_earlier_file_covered(tmp_path):
    a1 = write(tmp_path / "a1.jsonl", "node-a", [cli_ctx(), recv(0.001), dict(recv(30.0), dport=40001)])
    a2 = write(tmp_path / "a2.jsonl", "node-a", [cli_ctx(20.0), dict(recv(25.0), dport=40002),
                                                 dict(recv(40.0), dport=40003)], t=T0 + 20)
    df, summary = report_fleet([a1, a2])
    assert list(df["dport"]) == [40000, 40001, 40003]
    (w,) = summary.warnings
    assert f"node node-a: {a2} overlaps {a1}" in w and "its 1 events at or before the end" in w


def test_a_netfilter_drop_on_the_sender_node_is_a_firewall_reject(tmp_path):
    drop = {"kind": "ct_drop", "t": T0, "netns": NODE_NS, "reason": "NETFILTER_DROP", "family": 4,
            "ip_proto": 6, "src": CLIENT, "sport": 40000, "dst": VIP, "dport": 3306}
    ctx = node_ctx()
    ctx["namespaces"][0]["rules"] = [{"source": "nft", "family": "inet", "table": "fw", "chain": "input",
                                      "handle": 7, "text": "tcp dport 3306 reject with tcp reset",
                                      "packets": 1}]
    a, b = pair(tmp_path, b_records=[ctx, drop])
    (r,) = rows(report_fleet([a, b])[0])
    assert (r["node"], r["peer_node"], r["cause"]) == ("node-a", "node-b", "firewall_reject")
    assert "netfilter drop of its packet on node-b" in r["evidence"] and "reject with tcp reset" in r["evidence"]
    # alone, node-a's report cannot tell
    (alone,) = rows(report_recording(a)[0])
    assert alone["cause"] != "firewall_reject"


def test_a_drop_of_another_flow_is_not_joined(tmp_path):
    drop = {"kind": "ct_drop", "t": T0, "netns": NODE_NS, "reason": "NETFILTER_DROP", "family": 4,
            "ip_proto": 6, "src": CLIENT, "sport": 40009, "dst": VIP, "dport": 3306}
    a, b = pair(tmp_path, b_records=[node_ctx(), drop])
    (r,) = rows(report_fleet([a, b])[0])
    assert r["peer_node"] is None
