"""LiveState and rows: filters, ring bounds, pause, untrusted text."""

from __future__ import annotations

from typing import Any

import pytest

from rsttrace.analysis.classify import Verdict
from rsttrace.analysis.vocab import Cause, Confidence
from rsttrace.tui.rows import NetnsNames, detail_text, make_row
from rsttrace.tui.state import Batch, FilterError, FilterSpec, LiveState
from test_tui_fixtures import CLI, EVIL_COMM, LB, T0, VIP, reset_pair


def V(incident: int, t: float, cause: str, events: list[dict[str, Any]], dport: int = 40001,
      fixes: list | None = None) -> Verdict:
    return Verdict(incident, t, Cause(cause), Confidence.HIGH, "idle 7 s >= conntrack established timeout 4 s",
                   fixes or [], events, LB, CLI, VIP, 3306, "10.0.1.2", dport)


NAMES = NetnsNames({str(CLI): "cli", str(LB): "lb"})


def row(i: int, cause: str = "keepalive", comm: str = "mysql", dport: int = 40001):
    v = V(i, T0 + i, cause, reset_pair(T0 + i, dport, comm=comm), dport=dport)
    return make_row(i, v, NAMES)


def batch(rows, cap: int = 1000) -> Batch:
    b = Batch.empty(cap)
    for r in rows:
        b.add_row(r)
    b.now = max((r.t for r in rows), default=T0)
    return b


@pytest.mark.parametrize("text,ok", [
    ("port:3306", True), ("3306", True), ("cause:keep netns:lb", True), ("10.0.1.2", True),
    ("addr:10.0", True), ("mysql", True), ("port:abc", False), ("port:70000", False),
    ("netns:", False), ("99999", False),
])
def test_filter_parse(text, ok):
    if ok:
        assert FilterSpec.parse(text)
    else:
        with pytest.raises(FilterError):
            FilterSpec.parse(text)


@pytest.mark.parametrize("text,expected", [
    ("port:3306", {1, 2, 3}), ("port:40002", {2}), ("cause:listener", {3}),
    ("netns:cli", {1, 2, 3}), ("netns:srv", set()), ("addr:10.96.0.10", {1, 2, 3}),
    ("10.0.1", {1, 2, 3}), ("mysql", {1, 3}), ("evil keepalive", {2}), ("", {1, 2, 3}),
])
def test_filter_matches(text, expected):
    rows = [row(1), row(2, comm="evil", dport=40002), row(3, cause="no_listener")]
    spec = FilterSpec.parse(text)
    assert {r.seq for r in rows if spec.matches(r)} == expected


def test_ring_is_bounded_and_counts_everything():
    st = LiveState(capacity=50)
    b = Batch.empty(50)
    for i in range(1, 501):
        b.add_row(row(i))
    assert b.rows_dropped == 450
    st.apply(b)
    assert len(st.ring) == 50 and len(st.view) == 50
    assert st.total == 500 and st.counts["keepalive"] == 500
    assert st.row_at(0).seq == 500 and st.row_at(49).seq == 451
    st.apply(batch([row(i) for i in range(501, 531)]))
    assert len(st.ring) == 50 and st.row_at(0).seq == 530 and st.view[0].seq == 481
    assert st.index_of(500) == 30 and st.index_of(400) is None


def test_pause_keeps_counting_and_resume_shows_the_rows():
    st = LiveState(capacity=100)
    st.apply(batch([row(1)]))
    assert st.toggle_pause() is True
    st.apply(batch([row(2), row(3)]))
    assert st.total == 3 and [r.seq for r in st.view] == [1]
    assert st.toggle_pause() is False
    assert [r.seq for r in st.view] == [1, 2, 3]


def test_cycle_cause_goes_through_seen_causes_then_all():
    st = LiveState()
    st.apply(batch([row(1), row(2), row(3, cause="no_listener")]))
    assert st.cycle_cause() == "keepalive" and len(st.view) == 2
    assert st.cycle_cause() == "no_listener" and len(st.view) == 1
    assert st.cycle_cause() is None and len(st.view) == 3


def test_host_text_is_never_markup():
    r = row(1, comm=EVIL_COMM)
    assert r.process == f"{EVIL_COMM}[1234]"
    txt = detail_text(r, NAMES)
    assert EVIL_COMM in txt.plain  # parsed as markup it would read "x"
    ctrl = row(2, comm="a\x1b[2Jb")
    assert "\x1b" not in ctrl.process and "a\\x1b[2Jb" in ctrl.process


def test_every_namespace_cookie_seen_is_kept_for_the_apply_path():
    st = LiveState()
    for t, cookie in ((T0, 7), (T0 + 1, 7), (T0 + 2, 9)):   # 9: the inode was taken again
        b = Batch.empty(10)
        b.add_record({"kind": "ctx", "t": t, "namespaces": [
            {"netns": CLI, "name": "cli", "cookie": cookie}, {"netns": LB, "name": "lb"}]})
        st.apply(b)
    assert st.seen_namespaces() == [{"netns": CLI, "cookie": 7}, {"netns": CLI, "cookie": 9}]
    assert [n["netns"] for n in st.context()] == [CLI, LB]


def test_fix_plan_is_one_value_per_setting_over_every_incident():
    """Two keepalive incidents in one client namespace ask 1 s and 3 s: the
    plan of either shows 1 s, covering both; rows dropped beyond the ring's
    capacity still count."""
    from rsttrace.analysis.fixes import Where, keepalive_fixes
    where = Where(CLI, "cli")
    fix2 = keepalive_fixes(where, None, 2.0, "conntrack established timeout", sysctl_now=7200)
    fix6 = keepalive_fixes(where, None, 6.0, "conntrack established timeout", sysctl_now=7200)
    r6 = make_row(1, V(1, T0 + 1, "keepalive", reset_pair(T0 + 1, 40001), fixes=fix6), NAMES)
    r2 = make_row(2, V(2, T0 + 2, "keepalive", reset_pair(T0 + 2, 40002), fixes=fix2, dport=40002), NAMES)
    st = LiveState(capacity=1)
    st.apply(batch([r6, r2], cap=1))      # r6 falls out of the ring in the batch
    assert [r.seq for r in st.ring] == [2]
    for r in (r6, r2):
        ka = [f for f in st.fix_plan(r) if f.key == "net.ipv4.tcp_keepalive_time"]
        assert len(ka) == 1 and ka[0].value == 1 and len(ka[0].covers) == 2
