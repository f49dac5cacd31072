"""Conntrack episodes without a reset, and the lab's diagnosis from them."""

from __future__ import annotations

from rsttrace.analysis.classify import Classifier
from rsttrace.analysis.findings import conntrack_episodes

LB, CLI = 4026532247, 4026532300
T0 = 1_700_000_000.0


def ct(count=10, mx=262144, drop=0, early=0):
    return {"count": count, "max": mx, "buckets": 65536, "drop": drop, "early_drop": early,
            "invalid": 0, "insert_failed": 0}


def ctx(t, **by_ns):
    return {"kind": "ctx", "t": T0 + t, "namespaces": [
        {"netns": {"lb": LB, "cli": CLI}[k], "name": k, "ct": v, "sysctl": {}} for k, v in by_ns.items()]}


def full(t, netns=LB):
    return {"kind": "ct_full", "t": T0 + t, "netns": netns, "text": "nf_conntrack: table full, dropping packet"}


def drop(t, netns=LB):
    return {"kind": "ct_drop", "t": T0 + t, "netns": netns, "reason": "NETFILTER_DROP", "protocol": 2048}


def test_one_episode_from_lines_counters_and_count():
    recs = [ctx(0, lb=ct()), full(1), drop(1.1), drop(1.2), ctx(2, lb=ct(count=6, mx=6, drop=5)), full(4),
            ctx(5, lb=ct(count=3, mx=262144, drop=9))]
    (ep,) = conntrack_episodes(recs)
    assert ep.netns == LB and ep.confidence == "high"
    assert (ep.t_first, ep.t_last) == (T0 + 1, T0 + 5)
    r = ep.raw
    assert (r.log_lines, r.drop, r.netfilter_drops, r.full_snapshots, r.fullest) == (2, 9, 2, 1, (6, 6))
    assert "\"table full\" logged 2x" in ep.evidence and "count 6/6 (100%)" in ep.evidence
    assert "drop +9" in ep.evidence and "for 4 s" in ep.evidence
    assert ep.fixes and ep.fixes[0].key == "net.netfilter.nf_conntrack_max"


def test_episodes_split_by_quiet_gap_and_namespace():
    recs = [ctx(0, lb=ct(), cli=ct()), full(1), full(30), full(31, netns=CLI)]
    eps = conntrack_episodes(recs, window_s=10.0)
    assert [(e.netns, e.t_first - T0) for e in eps] == [(LB, 1), (LB, 30), (CLI, 31)]
    assert [e.netns for e in conntrack_episodes(recs, since=T0 + 20, netns={LB})] == [LB]


def test_drop_counter_alone_is_medium_and_netfilter_drops_alone_are_nothing():
    assert conntrack_episodes([ctx(0, lb=ct()), drop(1), drop(2)]) == []
    (ep,) = conntrack_episodes([ctx(0, lb=ct(early=1)), ctx(1, lb=ct(early=4))])
    assert ep.confidence == "medium" and "early_drop +3" in ep.evidence


def test_line_naming_no_namespace():
    (ep,) = conntrack_episodes([full(1, netns=None)])
    assert ep.netns is None and "namespace not named" in ep.evidence


def test_classifier_context_gives_the_same_episodes():
    recs = [ctx(0, lb=ct()), full(1), ctx(2, lb=ct(count=6, mx=6, drop=5))]
    c = Classifier()
    c.feed_many(recs)
    assert [e.raw for e in conntrack_episodes(c.context)] == [e.raw for e in conntrack_episodes(recs)]


def test_report_summary_lists_episode_without_reset(tmp_path):
    from rsttrace.analysis.report import report_recording
    import json
    p = tmp_path / "r.jsonl"
    lines = [{"kind": "header", "schema": 1, "t": T0, "netns_names": {str(LB): "lb"}},
             ctx(0, lb=ct()), full(1), ctx(2, lb=ct(count=6, mx=6, drop=5))]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    df, summary = report_recording(p)
    assert len(df) == 0
    assert "table full at" in summary.text and "netns lb" in summary.text and "count 6/6" in summary.text
    assert "ct_full_episode" in set(summary.frame["section"])


def test_lab_diagnosis_uses_episodes():
    from rsttrace.lab.diagnose import diagnose
    from rsttrace.lab.scenarios import SCENARIOS, ScenarioRun
    sc = SCENARIOS["conntrack_full"]
    run = ScenarioRun(sc.name, sc.title, sc.expect, {"conns": []}, T0, T0 + 10)
    recs = [ctx(0, lb=ct()), full(1), drop(1.5), ctx(2, lb=ct(count=6, mx=6, drop=5))]
    d = diagnose(run, recs, {LB: "node"})
    assert d.ok and d.diagnosed == "conntrack_full"
    assert "\"table full\" logged 1x" in d.evidence and "no reset" in d.evidence
    assert "nf_conntrack_max=" in d.fix
    # netfilter drops alone (a DROP rule) are no full table
    d = diagnose(run, [ctx(0, lb=ct()), drop(1.5)], {LB: "node"})
    assert d.diagnosed == "none"
