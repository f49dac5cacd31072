"""The netns label policy: bounded, counters never move, names stay put."""

from __future__ import annotations

import pytest

from rsttrace.exporter.catalog import OTHER_NETNS, UNKNOWN_NETNS
from rsttrace.exporter.netns import NetnsLabels


def ns(ino: int, name: str, count: int = 0, socks: int = 0) -> dict:
    return {"netns": ino, "name": name, "tcp_sockets": socks, "ct": {"count": count}}


def test_ctx_fills_slots_by_activity_root_first():
    lab = NetnsLabels(cap=3)
    lab.observe([ns(1, "quiet"), ns(2, "busy", count=500), ns(3, "init"), ns(4, "mid", socks=20)], t=0)
    assert lab.labelled() == {3: "init", 2: "busy", 4: "mid"}


def test_counted_namespace_evicts_the_least_active_gauge_only_one_never_init():
    lab = NetnsLabels(cap=3)
    lab.observe([ns(1, "init"), ns(2, "busy", count=500), ns(3, "mid", count=20), ns(9, "pod")], t=0)
    assert lab.for_event(9, t=1) == "pod"
    assert lab.labelled() == {1: "init", 2: "busy", 9: "pod"}


def test_counts_go_to_other_when_every_slot_is_counted():
    lab = NetnsLabels(cap=2, names={1: "a", 2: "b", 3: "c"})
    assert (lab.for_event(1, 0), lab.for_event(2, 0)) == ("a", "b")
    assert lab.for_event(3, 0) == OTHER_NETNS
    assert lab.for_event(None, 0) == UNKNOWN_NETNS
    # a ctx cannot push a counted namespace out either
    lab.observe([ns(1, "a"), ns(2, "b"), ns(4, "huge", count=10**6)], t=1)
    assert lab.labelled() == {1: "a", 2: "b"}


def test_gone_namespace_frees_its_slot_after_the_grace_period():
    lab = NetnsLabels(cap=2, grace_s=10, names={1: "a", 2: "b"})
    lab.for_event(1, 0)
    lab.for_event(2, 0)
    assert lab.observe([ns(2, "b")], t=5) == []          # 1 missing, within grace
    assert lab.observe([ns(2, "b")], t=11) == ["a"]      # 1 gone: its series are dropped
    assert lab.for_event(3, 12) == "ino:3"               # the slot is free again


def test_recreated_namespace_with_the_same_name_inherits_the_label():
    lab = NetnsLabels(cap=2, names={1: "pod-a"})
    assert lab.for_event(1, 0) == "pod-a"
    lab.observe([ns(5, "pod-a")], t=1)                   # same name, new inode
    assert lab.labelled() == {5: "pod-a"}                # one series, not two


def test_label_of_a_slot_does_not_change_and_resolver_is_asked_once():
    asked = []

    def resolver(ino):
        asked.append(ino)
        return None
    lab = NetnsLabels(cap=4, resolver=resolver)
    assert lab.for_event(7, 0) == "ino:7"
    lab.observe([ns(7, "later-name")], t=1)
    assert lab.for_event(7, 2) == "ino:7"
    lab.for_event(8, 3)
    lab.for_event(8, 4)
    assert asked == [7, 8]


def test_cap_must_be_positive():
    with pytest.raises(ValueError):
        NetnsLabels(cap=0)


def test_names_that_are_not_utf8_become_text_labels():
    """However a name with a lone surrogate (a byte that is not UTF-8, as
    Python reads file names) arrives, its label is valid UTF-8."""
    odd = "rt\udcff"
    lab = NetnsLabels(cap=5, names={1: odd}, resolver=lambda ino: odd)
    lab.observe([ns(2, odd)], t=0)
    assert (lab.for_event(1, 0), lab.for_event(2, 0), lab.for_event(3, 0)) == ("rt\\xff",) * 3
    for label in lab.labelled().values():
        label.encode("utf-8")


def test_an_inode_reused_by_another_namespace_takes_its_own_name():
    """The kernel reuses a gone namespace's inode: the namespace cookie
    tells the new one apart, so it is not counted under the old name."""
    lab = NetnsLabels(cap=4)
    assert lab.observe([dict(ns(7, "pod-a", socks=3), cookie=101)], t=0) == []
    assert lab.for_event(7, t=1) == "pod-a"
    freed = lab.observe([dict(ns(7, "pod-b", socks=3), cookie=202)], t=2)
    assert freed == ["pod-a"]           # its series are dropped, as for a gone namespace
    assert lab.for_event(7, t=3) == "pod-b"
    assert lab.name(7) == "pod-b"
    # the same cookie again, or no cookie (kernels before 5.14): nothing moves
    assert lab.observe([dict(ns(7, "pod-b"), cookie=202), ns(8, "x")], t=4) == []
    assert lab.for_event(7, t=5) == "pod-b"
