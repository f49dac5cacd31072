"""Storm mode downstream, without root: a storm's reset_agg records weigh
what they stand for in the classifier, the report's `count` column and
summary, the exporter's counters, and update one row of the live screen in
place."""

from __future__ import annotations

import io

from rsttrace.analysis.classify import Classifier
from rsttrace.analysis.report import CsvStream, write_verdicts
from rsttrace.exporter.state import ExportState
from rsttrace.tui.rows import NetnsNames, make_row
from rsttrace.tui.state import Batch, LiveState

NS = 4026532000


def agg(t: float, direction: str, count: int) -> dict:
    base = {"kind": "reset_agg", "t": t, "t_first": t - 0.9, "count": count, "sampled": 8, "dir": direction,
            "netns": NS, "family": 4, "src": "127.0.0.1", "sport": 9, "dst": "127.0.0.1", "dport": 0,
            "reason": None, "reason_raw": None}
    if direction == "sent":
        return base | {"state": "", "state_raw": 0, "reason": "NO_SOCKET", "reason_raw": 1,
                       "has_sock": False, "syn": True}
    return base | {"state": "SYN_SENT", "state_raw": 2, "has_sock": True, "syn": None}


def detailed(t: float, direction: str, port: int) -> dict:
    r = agg(t, direction, 1)
    del r["count"], r["sampled"], r["t_first"]
    return r | {"kind": "reset", "dport": port, "syn": True if direction == "sent" else None}


def verdicts(records: list[dict]) -> list:
    clf = Classifier()
    return clf.feed_many(records) + clf.flush()


STORM = [detailed(100.0, "sent", 40000), detailed(100.0, "recv", 40000),
         agg(101.0, "sent", 5000), agg(101.0, "recv", 5000),
         agg(102.0, "sent", 7000), agg(102.0, "recv", 7000)]


def test_a_storm_pairs_into_verdicts_with_counts():
    vs = verdicts(STORM)
    assert [(v.cause, v.count, len(v.events)) for v in vs] == [
        ("no_listener", 1, 2), ("no_listener", 5000, 2), ("no_listener", 7000, 2)]
    assert vs[1].sender_netns == vs[1].receiver_netns == NS


def test_report_rows_carry_their_count_and_the_summary_weighs_them():
    out = io.StringIO()
    sink = CsvStream(out, writer_process=False)
    for v in verdicts(STORM):
        sink.add(v)
    sink.close()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(",count")
    assert [ln.rsplit(",", 1)[1] for ln in lines[1:]] == ["1", "1", "5000", "5000", "7000", "7000"]
    t = sink.tally
    assert (t.rows, t.n, t.causes, t.incidents) == (6, 24002, {"no_listener": 24002}, 3)
    assert sum(t.per_s.values()) == 24002
    assert write_verdicts(verdicts(STORM), io.StringIO()) == 6    # rows written


def test_exporter_counts_every_reset_of_a_storm():
    st = ExportState()
    st.ingest(STORM)
    st.flush()
    view = st.view()
    assert {(k[1]): v for k, v in view.resets.items()} == {"sent": 12001, "recv": 12001}
    assert view.incidents["no_listener"] == 12001


def test_the_storm_row_updates_in_place():
    state = LiveState(capacity=100)
    names = NetnsNames()
    for seq, v in enumerate(verdicts(STORM)):
        b = Batch.empty(100)
        b.add_row(make_row(seq, v, names))
        state.apply(b)
    assert len(state.view) == 2       # the plain reset, and one storm row
    storm = state.view[-1]
    assert storm.seq == 1 and storm.count == 12000 and storm.flow.startswith("12,000× 127.0.0.1:9")
    assert state.total == 12001 and state.counts["no_listener"] == 12001
    # the screen's export still has every verdict folded into it
    assert [v.count for v in state.retained_verdicts()] == [1, 5000, 7000]


def test_a_negative_storm_rate_is_one_line_and_creates_nothing(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "x.jsonl"
    for cmd in (["record", "-o", str(out)], ["export"], ["live"]):
        p = subprocess.run([sys.executable, "-m", "rsttrace", *cmd, "--storm-rate", "-5"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert p.returncode == 2, (cmd, p.stderr)
        assert p.stderr.strip().splitlines() == [
            "rsttrace: --storm-rate must be 0 (every reset in full) or a rate in resets per second"]
    assert not out.exists()
