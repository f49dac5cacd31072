"""Exporter state and exposition, without the kernel: fixture recordings
go through the same state, collector and text format Prometheus scrapes,
and the parsed exposition is compared with the fixtures' own records and
their expected verdicts (tests/fixtures/expected.json)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rsttrace.analysis.vocab import CAUSES
from rsttrace.exporter.catalog import BY_NAME, METRICS, OTHER_NETNS, series_names
from rsttrace.exporter.collector import RsttraceCollector, build_families
from rsttrace.exporter.netns import NetnsLabels
from rsttrace.exporter.state import ExportState, View
from rsttrace.schema.recording import read_recording
from rsttrace.tracer.replay import ReplaySource

FIX = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTED = json.loads((FIX / "expected.json").read_text())


def scrape(state: ExportState, source=None) -> dict[tuple[str, tuple], float]:
    """Exposition text -> {(sample name, sorted labels): value}, parsed by
    prometheus-client's own parser. Every series carries the state's node
    label (checked here, then left out of the keys)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RsttraceCollector(state, source))
    text = generate_latest(reg).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = dict(s.labels)
            assert labels.pop("node") == state.node, s
            key = (s.name, tuple(sorted(labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def values(samples, name: str, **match) -> dict[tuple, float]:
    return {lab: v for (n, lab), v in samples.items()
            if n == name and all(dict(lab).get(k) == w for k, w in match.items())}


def replay_state(name: str) -> tuple[ExportState, ReplaySource]:
    src = ReplaySource(FIX / name)
    state = ExportState(header=src.header)
    for rec in src:
        state.ingest([rec])
    state.flush()
    return state, src


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_counts_by_cause_direction_netns(name):
    state, src = replay_state(name)
    samples = scrape(state, src)
    # incidents by cause: what the fixture says its verdicts are
    want = Counter(v["cause"] for v in EXPECTED[name])
    got = {dict(lab)["cause"]: v for lab, v in values(samples, "rsttrace_reset_incidents_total").items()}
    assert set(got) == set(CAUSES)   # every cause present, zero or not
    assert {c: n for c, n in got.items() if n} == dict(want)
    # every reset record is counted once, under its direction and namespace name
    rec = read_recording(FIX / name)
    names = {int(k): v for k, v in rec.header["netns_names"].items()}
    for r in rec.records:   # ctx records name namespaces the header does not
        for ns in r.get("namespaces") or ():
            names.setdefault(ns["netns"], ns["name"])
    want_dir = Counter((r["dir"], names.get(r["netns"], f"ino:{r['netns']}"))
                       for r in rec.records if r["kind"] == "reset")
    got_dir: Counter = Counter()
    for lab, v in values(samples, "rsttrace_resets_total").items():
        d = dict(lab)
        assert d["cause"] in CAUSES
        got_dir[(d["direction"], d["netns"])] += v
    assert dict(got_dir) == dict(want_dir)


def test_keepalive_fixture_resets_carry_the_verdicts_cause():
    state, src = replay_state("keepalive_lab.jsonl")
    samples = scrape(state, src)
    assert values(samples, "rsttrace_resets_total") == {
        (("cause", "keepalive"), ("direction", "sent"), ("netns", "lb")): 1.0,
        (("cause", "keepalive"), ("direction", "recv"), ("netns", "cli")): 1.0,
    }


def test_gauges_follow_the_newest_ctx():
    state, src = replay_state("full_table.jsonl")
    samples = scrape(state, src)
    rec = read_recording(FIX / "full_table.jsonl")
    last = [r for r in rec.records if r["kind"] == "ctx"][-1]
    seen = 0
    for ns in last["namespaces"]:
        lab = (("netns", ns["name"]),)
        ct = ns.get("ct")
        if ct:
            assert samples[("rsttrace_conntrack_entries", lab)] == ct["count"]
            assert samples[("rsttrace_conntrack_entries_limit", lab)] == ct["max"]
            assert samples[("rsttrace_conntrack_drop_total", lab)] == ct["drop"]
            assert samples[("rsttrace_conntrack_invalid_total", lab)] == ct["invalid"]
            seen += 1
        for key, v in (ns.get("sysctl") or {}).items():
            if key == "tcp_keepalive_time":
                assert samples[("rsttrace_tcp_keepalive_time_seconds", lab)] == v
            if key == "nf_conntrack_tcp_timeout_established":
                assert samples[("rsttrace_conntrack_tcp_timeout_established_seconds", lab)] == v
    assert seen >= 1
    assert samples[("rsttrace_context_timestamp_seconds", ())] == last["t"]
    # the fixture's netfilter drop and "table full" line, counted in their namespace
    n_drop = sum(1 for r in rec.records if r["kind"] == "ct_drop")
    n_full = sum(1 for r in rec.records if r["kind"] == "ct_full")
    assert sum(values(samples, "rsttrace_netfilter_drops_total").values()) == n_drop > 0
    assert sum(values(samples, "rsttrace_conntrack_table_full_logs_total").values()) == n_full > 0


def test_ipvs_timeouts_exported_with_protocol_label():
    state, src = replay_state("ipvs_mismatch_truncated.jsonl")
    samples = scrape(state, src)
    got = values(samples, "rsttrace_ipvs_timeout_seconds")
    assert got[(("netns", "init"), ("protocol", "tcp"))] == 900
    assert samples[("rsttrace_conntrack_tcp_timeout_established_seconds", (("netns", "init"),))] == 600


class FakeKernel:
    def __init__(self):
        self.transitions = {("CLOSE", "SYN_SENT"): 5, ("SYN_SENT", "ESTABLISHED"): 4}

    def stats(self):
        return {"events": 12, "lost": 3}

    def tcp_transitions(self):
        return dict(self.transitions)


def test_kernel_counters_read_at_scrape_time():
    k = FakeKernel()
    state = ExportState(header={"plan": {"reset_sent": {"available": True},
                                         "ipvs_expire": {"available": False}}})
    s1 = scrape(state, k)
    assert values(s1, "rsttrace_tcp_state_transitions_total") == {
        (("new_state", "SYN_SENT"), ("old_state", "CLOSE")): 5,
        (("new_state", "ESTABLISHED"), ("old_state", "SYN_SENT")): 4}
    assert s1[("rsttrace_events_lost_total", ())] == 3
    assert s1[("rsttrace_hook_available", (("signal", "reset_sent"),))] == 1
    assert s1[("rsttrace_hook_available", (("signal", "ipvs_expire"),))] == 0
    k.transitions[("CLOSE", "SYN_SENT")] = 9
    s2 = scrape(state, k)
    assert s2[("rsttrace_tcp_state_transitions_total",
               (("new_state", "SYN_SENT"), ("old_state", "CLOSE")))] == 9


def test_a_failing_map_read_does_not_fail_the_scrape():
    class Broken:
        def stats(self):
            raise OSError("map gone")
    errors = []
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RsttraceCollector(ExportState(), Broken(), on_error=errors.append))
    text = generate_latest(reg).decode()
    assert "rsttrace_reset_incidents_total" in text and "rsttrace_events_lost_total" not in text
    assert len(errors) == 1


def test_every_catalog_metric_is_produced_and_named_by_convention():
    view = View(resets={("keepalive", "recv", "cli"): 1}, incidents={"keepalive": 1},
                nf_drops={"lb": 2}, full_logs={"lb": 1},
                namespaces=[("lb", {"netns": 1, "name": "lb", "nat": True, "tcp_sockets": 3,
                                    "ipvs": {"tcp": 900, "tcpfin": 120, "udp": 300},
                                    "ct": {"count": 1, "max": 10, "buckets": 4, "drop": 0,
                                           "early_drop": 0, "invalid": 0, "insert_failed": 0,
                                           "chaintoolong": 0, "search_restart": 0},
                                    "sysctl": {"tcp_keepalive_time": 7200, "tcp_keepalive_intvl": 75,
                                               "tcp_keepalive_probes": 9,
                                               "nf_conntrack_tcp_timeout_established": 4,
                                               "nf_conntrack_tcp_be_liberal": 0}})],
                omitted=0, ctx_t=1.0, header={"plan": {"reset_sent": {"available": True}}})
    fams = build_families(view, {"events": 1, "lost": 0, "backlog": 0}, {("CLOSE", "SYN_SENT"): 1})
    produced = {s.name for f in fams for s in f.samples}
    assert produced == series_names()
    for m in METRICS:
        assert m.name.startswith("rsttrace_") and m.name == m.name.lower()
        assert m.name.endswith("_total") == (m.type == "counter"), m.name
        assert (m.type == "info") == m.name.endswith("_info")
        assert "netns" not in m.labels or m.labels[0] == "netns" or m.name == "rsttrace_resets_total"
        for bad in ("src", "dst", "sport", "dport", "addr", "port", "pid", "cookie"):
            assert bad not in m.labels   # no per-flow labels
        if "seconds" in m.help.lower() and m.type == "gauge":
            assert m.name.endswith("_seconds")
    assert BY_NAME["rsttrace_conntrack_tcp_timeout_established_seconds"].type == "gauge"


def ctx(t: float, inos: range, count=lambda i: i % 7) -> dict:
    return {"kind": "ctx", "t": t, "namespaces": [
        {"netns": i, "name": f"ns{i}", "tcp_sockets": 1, "sysctl": {"tcp_keepalive_time": 7200},
         "ct": {"count": count(i), "max": 1000, "drop": 0}} for i in inos]}


def reset(t: float, ino: int, port: int) -> dict:
    return {"kind": "reset", "t": t, "netns": ino, "dir": "recv", "src": "10.0.0.1", "sport": 9,
            "dst": "10.0.0.2", "dport": port, "state": "SYN_SENT", "has_sock": True}


def test_netns_cardinality_is_bounded_and_counters_never_go_back():
    cap = 8
    state = ExportState(labels=NetnsLabels(cap=cap, grace_s=5.0))
    prev: dict = {}
    total = 0
    t = 100.0
    # 30 rounds; namespaces come and go (a window of 40 out of 400), each round
    # some of them see refused connects
    for rnd in range(30):
        t += 1.0
        live = range(1000 + rnd * 10, 1040 + rnd * 10)
        state.ingest([ctx(t, live)])
        batch = [reset(t + 0.01 * k, ino, 40000 + rnd * 100 + k) for k, ino in enumerate(live[::7])]
        total += len(batch)
        state.ingest(batch)
        state.tick(t + 5)
        samples = scrape(state)
        labels = {dict(lab)["netns"] for (n, lab) in samples if dict(lab).get("netns")}
        assert len(labels) <= cap + 1, labels        # the cap plus "other"
        resets = values(samples, "rsttrace_resets_total")
        assert sum(resets.values()) <= total
        for lab, v in resets.items():                 # counters only go up
            assert v >= prev.get(lab, 0), lab
        # a series may vanish (its namespace is gone) but "other" never shrinks
        prev = resets
        assert samples[("rsttrace_netns_omitted", ())] == 40 - len(
            [x for x in labels if x.startswith("ns") and int(x[2:]) in live])
    state.flush()
    by_cause = {dict(lab)["cause"]: v for lab, v in values(scrape(state), "rsttrace_reset_incidents_total").items()}
    assert by_cause["no_listener"] == total          # incidents are never lost to the cap
    assert any(dict(lab)["netns"] == OTHER_NETNS for lab in values(scrape(state), "rsttrace_resets_total"))


def test_live_inference_of_an_idle_timeout_beyond_the_node():
    """The exporter classifies live: three resets from one remote after long
    idles count the third as keepalive (an idle timeout inferred on the
    path over the sliding window); it cannot relabel the first two."""
    from test_analysis_inference import series
    state = ExportState(header={"netns_names": {}})
    state.ingest(series([400, 420, 380]))
    state.flush()
    got = {dict(lab)["cause"]: v for lab, v in values(scrape(state), "rsttrace_reset_incidents_total").items()}
    assert (got["keepalive"], got["peer_reset"]) == (1, 2)
