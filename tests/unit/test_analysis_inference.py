"""Idle timeouts beyond the node, inferred from the resets themselves:
resets from one remote endpoint, no sender on this host, ESTABLISHED
sockets, all after idling. Table-driven over the patterns, then the live
versus look-ahead labels, the window and the bounds."""

from __future__ import annotations

import pytest

from rsttrace.analysis import classify
from rsttrace.analysis.classify import INFER_IDLE_FLOOR_S, Classifier
from test_analysis_classify import CLI, recv

NLB = ("10.20.0.5", 3306)
NAT = ("52.1.2.3", 443)


def remote(t, idle_s, where=NLB, dport=40000, **kw):
    return recv(t, src=where[0], sport=where[1], dport=dport, idle_ms=int(idle_s * 1000), **kw)


def run(records, **kw):
    c = Classifier(**kw)
    out = []
    for r in records:
        out += c.feed(r)
    return out + c.flush()


def series(idles, where=NLB, t0=10.0, step=60.0, port0=40000, **kw):
    return [remote(t0 + i * step, idle, where, dport=port0 + i, **kw) for i, idle in enumerate(idles)]


# name: (records, causes live, causes with look-ahead)
CASES = {
    "three_long_idles": (series([400, 420, 380]),
                         ["peer_reset", "peer_reset", "keepalive"], ["keepalive"] * 3),
    "fewer_than_three": (series([400, 420]), ["peer_reset"] * 2, ["peer_reset"] * 2),
    "one_short_idle_first": (series([0.2, 400, 420, 380]), ["peer_reset"] * 4, ["peer_reset"] * 4),
    # look-ahead also sees a short one after: the earlier long ones lose it
    "one_short_idle_last": (series([400, 420, 380, 0.2]),
                            ["peer_reset", "peer_reset", "keepalive", "peer_reset"], ["peer_reset"] * 4),
    "just_at_the_floor": (series([INFER_IDLE_FLOOR_S] * 3),
                          ["peer_reset", "peer_reset", "keepalive"], ["keepalive"] * 3),
    "just_below_the_floor": (series([INFER_IDLE_FLOOR_S - 0.01] * 3), ["peer_reset"] * 3, ["peer_reset"] * 3),
    # two remotes with different idle patterns, interleaved: only the one
    # whose resets all came after long idles gets the inference
    "two_remotes": ([r for pair in zip(series([400, 410, 420], NLB), series([0.3, 500, 600], NAT, t0=12.0))
                     for r in pair],
                    ["peer_reset", "peer_reset", "peer_reset", "peer_reset", "keepalive", "peer_reset"],
                    ["keepalive", "peer_reset", "keepalive", "peer_reset", "keepalive", "peer_reset"]),
    "three_spread_over_more_than_the_window": (series([400, 420, 380], step=4000.0),
                                               ["peer_reset"] * 3, ["peer_reset"] * 3),
    "not_for_close_wait": (series([400, 420, 380], state="CLOSE_WAIT"), ["peer_closed"] * 3, ["peer_closed"] * 3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_inference(name):
    records, live, ahead = CASES[name]
    assert [v.cause for v in run(records)] == live
    assert [v.cause for v in run(records, look_ahead=True)] == ahead


def test_evidence_names_the_bound_the_count_and_the_range():
    v = run(series([400, 420, 380]))[-1]
    assert v.confidence == "medium"
    assert v.evidence.startswith("an idle timeout of at most 380 s on the path to 10.20.0.5:3306 "
                                 "(3 resets, idle 380..420 s)"), v.evidence
    assert "SO_KEEPALIVE off" in v.evidence and "sender not on this host" in v.evidence
    ka = [f for f in v.fixes if f.key == "net.ipv4.tcp_keepalive_time"]
    assert ka and ka[0].value == 190 and ka[0].netns == CLI
    # application proxies count data only: the pool's idle time must be below it too
    pool = {f.key: f for f in v.fixes if f.scope == "pool"}
    assert pool["go.SetConnMaxIdleTime"].value == 190
    assert "application proxy" in pool["go.SetConnMaxIdleTime"].reason


@pytest.mark.parametrize("idles, named", [
    ([360, 400, 420], "AWS NLB"),             # at most 360 s: 350 fits
    ([250, 300, 260], "Azure load balancer"),
    ([1300, 1250, 1400], "GCP Cloud NAT"),
    ([900, 950, 1000], None),                 # 900 s is none of them (an IPVS-like value)
    ([50, 60, 70], None),
])
def test_known_cloud_defaults_are_named_only_as_a_match(idles, named):
    v = run(series(idles))[-1]
    assert v.cause == "keepalive"
    if named:
        assert named in v.evidence and "configurable" in v.evidence
    else:
        assert "matches" not in v.evidence


def test_a_declared_idle_timeout_still_wins():
    v = run(series([400, 420, 380]), idle_timeouts={"nlb": 350.0})[-1]
    assert v.cause == "keepalive" and v.evidence.startswith("idle 380 s >= nlb idle timeout 350 s")


def test_keepalive_faster_than_the_bound_points_at_an_application_proxy():
    v = run(series([400, 420, 380], ka=True, ka_time=60))[-1]
    assert v.cause == "keepalive"
    assert "keepalive 60 s is below it" in v.evidence and "application proxy" in v.evidence


def test_look_ahead_keeps_the_order_and_the_incident_ids():
    records = series([400, 420, 380]) + [recv(500, src="10.9.9.9", dport=50000, idle_ms=5)]
    records.insert(1, recv(20, state="SYN_SENT", idle_ms=None, dport=41000))
    out = run(records, look_ahead=True)
    assert [v.cause for v in out] == ["keepalive", "no_listener", "keepalive", "keepalive", "peer_reset"]
    assert [v.incident for v in out] == sorted(v.incident for v in out)
    assert [v.t for v in out] == sorted(v.t for v in out)


def test_look_ahead_releases_once_the_window_after_has_passed():
    c = Classifier(look_ahead=True, infer_window_s=100.0)
    assert c.feed_many(series([400, 420], step=10.0)) == []
    # past the window after the first: it goes out as it stands (only the
    # second was within 100 s of it); the second's window holds all three
    out = c.feed(remote(10.0 + 100 + 1.0 + 0.5, 380, dport=45000))
    assert [v.cause for v in out] == ["peer_reset"]
    assert [v.cause for v in c.flush()] == ["keepalive", "peer_reset"]


def test_held_verdicts_are_bounded(monkeypatch):
    monkeypatch.setattr(classify, "HELD_MAX", 50)
    c = Classifier(look_ahead=True)
    out = c.feed(remote(1, 400))
    for i in range(200):
        out += c.feed(recv(2 + i * 0.1, state="SYN_SENT", src="10.9.9.9", dport=30000 + i, idle_ms=None))
    assert len(c._held) <= 51 and len(out) >= 150
    out += c.flush()
    assert len(out) == 201 and [v.incident for v in out] == sorted(v.incident for v in out)


def test_memory_is_bounded_per_remote_and_in_remotes(monkeypatch):
    monkeypatch.setattr(classify, "INFER_REMOTES", 100)
    c = Classifier()
    for i in range(1000):
        c.feed(recv(1 + i * 0.001, src=f"10.1.{i // 250}.{i % 250}", sport=3306, dport=40000 + i % 20000,
                    idle_ms=400_000))
    c.flush()
    assert len(c._remotes) <= 100
    c = Classifier(infer_window_s=50.0)
    for i in range(2000):
        c.feed(remote(1 + i, 400, dport=20000 + i))
    c.flush()
    assert len(c._remotes[NLB].all) <= 52   # the last window, not the whole run


def test_live_sliding_window_forgets_old_resets():
    recs = series([400, 420], t0=10.0, step=10.0) + [remote(10.0 + 3700, 380, dport=45000)]
    assert [v.cause for v in run(recs)] == ["peer_reset"] * 3
    recs = series([400, 420], t0=10.0, step=10.0) + [remote(10.0 + 3500, 380, dport=45000)]
    assert [v.cause for v in run(recs)] == ["peer_reset", "peer_reset", "keepalive"]



def test_per_remote_memory_is_capped(monkeypatch):
    monkeypatch.setattr(classify, "INFER_PER_REMOTE", 16)
    c = Classifier()
    out = []
    for i in range(200):
        out += c.feed(remote(1 + i * 0.5, 400 + i % 7, dport=20000 + i))
    out += c.flush()
    idles = c._remotes[NLB]
    assert len(idles.all) <= 16 and len(idles.mins) <= 16 and len(idles.maxs) <= 16
    assert out[-1].evidence.startswith("an idle timeout of at most 400 s") and "(16 resets" in out[-1].evidence


@pytest.mark.parametrize("idles", [[5, 3, 9, 1.5, 7, 2, 8], [9, 8, 7, 6, 5, 4, 3], [3, 4, 5, 6, 7, 8, 9]])
def test_sliding_extremes_equal_a_scan_over_the_window(idles):
    """The monotonic queues give the window's shortest and longest idle."""
    c = Classifier(infer_window_s=25.0)
    recs = series(idles, step=10.0)
    got = [v.evidence for v in run_with(c, recs)]
    for k, ev in enumerate(got):
        window = [x for j, x in enumerate(idles) if k - 2 <= j <= k]   # 25 s back, 10 s apart
        if len(window) >= 3:
            assert f"at most {min(window):g} s" in ev and f"..{max(window):g} s" in ev, (k, ev)


def run_with(c, records):
    out = []
    for r in records:
        out += c.feed(r)
    return out + c.flush()
