"""Which network namespaces get a `netns` label of their own.

A node with hundreds of pods has hundreds of namespaces; one label value
each would make every per-namespace metric as many series. At most `cap`
namespaces get a label (the slots); the rest are summed under
`netns="other"` in counters and left out of gauges (their number is
`rsttrace_netns_omitted`).

Policy, chosen so that counters never go backwards:
- a namespace where a reset or drop is counted takes a free slot, or
  evicts the least active namespace that only had gauges; when every slot
  holds counted namespaces, its counts go to `other` and stay there;
- free slots are filled from each context snapshot by activity
  (conntrack entries + TCP sockets), the root namespace first;
- a slot is freed when its namespace has been missing from the context
  snapshots for `grace_s` (the namespace is gone); the caller drops that
  label's series then; so is a slot whose inode turns up with another
  namespace cookie (the kernel reused the inode of a namespace that is gone).
The label of a slot is the namespace's name when it is taken (`init`, the
/run/netns name, or `pid:N`) and does not change while it is held; a name
with bytes that are not UTF-8 is labelled with them as `\\xNN`
(tracer/fsnames.py), never a string the exposition cannot encode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rsttrace.tracer.fsnames import text

from .catalog import OTHER_NETNS, UNKNOWN_NETNS

Resolver = Callable[[int], "str | None"]


@dataclass
class _Slot:
    label: str
    counted: bool = False    # a counter carries this label: never evicted for a gauge
    activity: float = 0.0
    last_seen: float = 0.0


def _activity(ns: dict[str, Any]) -> float:
    ct = ns.get("ct") or {}
    n = ct.get("count") if isinstance(ct, dict) else None
    socks = ns.get("tcp_sockets")
    return float((n if isinstance(n, int) else 0) + (socks if isinstance(socks, int) else 0))


class NetnsLabels:
    def __init__(self, cap: int = 50, grace_s: float = 300.0,
                 names: dict[Any, str] | None = None, resolver: Resolver | None = None):
        if cap < 1:
            raise ValueError("netns cap must be at least 1")
        self.cap = cap
        self.grace_s = grace_s
        self._slots: dict[int, _Slot] = {}
        self._names: dict[int, str] = {}
        self._cookies: dict[int, int] = {}    # inode -> netns cookie (never reused while the host runs)
        self._resolver = resolver
        self._unresolved: set[int] = set()
        self.learn(names or {})

    # -- names ------------------------------------------------------------
    def learn(self, names: dict[Any, str]) -> None:
        for k, v in names.items():
            try:
                self._names[int(k)] = text(str(v))
            except (TypeError, ValueError):
                continue

    def name(self, ino: Any) -> str | None:
        """The namespace's name (`init`, its /run/netns name, `pid:N`), or
        None when nothing names it."""
        if not isinstance(ino, int) or isinstance(ino, bool):
            return None
        name = self._name(ino)
        return None if name.startswith("ino:") else name

    def _name(self, ino: int) -> str:
        name = self._names.get(ino)
        if name is None and self._resolver is not None and ino not in self._unresolved:
            name = self._resolver(ino)
            name = None if name is None else text(name)
            if name is None:
                self._unresolved.add(ino)   # ask once: the resolver scans /proc
            else:
                self._names[ino] = name
        return name or f"ino:{ino}"

    # -- slots ------------------------------------------------------------
    def _take(self, ino: int, t: float, counted: bool, activity: float = 0.0) -> _Slot:
        label = self._name(ino)
        # Names are unique at any one time: a slot holding this label for
        # another inode belongs to a namespace that is gone (a pod's netns
        # recreated under the same name), so the new one inherits it.
        for old, slot in list(self._slots.items()):
            if slot.label == label and old != ino:
                del self._slots[old]
                slot.counted = slot.counted or counted
                slot.last_seen = t
                self._slots[ino] = slot
                return slot
        slot = self._slots[ino] = _Slot(label, counted, activity, t)
        return slot

    def _evictable(self) -> int | None:
        """The least active slot that only carries gauges (never `init`)."""
        cands = [(s.activity, ino) for ino, s in self._slots.items()
                 if not s.counted and s.label != "init"]
        return min(cands)[1] if cands else None

    def for_event(self, ino: Any, t: float) -> str:
        """The label to count an event of namespace `ino` under."""
        if not isinstance(ino, int) or isinstance(ino, bool):
            return UNKNOWN_NETNS
        slot = self._slots.get(ino)
        if slot is None:
            if len(self._slots) >= self.cap:
                victim = self._evictable()
                if victim is None:
                    return OTHER_NETNS
                del self._slots[victim]
            slot = self._take(ino, t, counted=True)
        slot.counted = True
        slot.last_seen = max(slot.last_seen, t)
        return slot.label

    def observe(self, namespaces: Iterable[dict[str, Any]], t: float) -> list[str]:
        """Takes a ctx record's namespaces; returns the labels freed (their
        namespaces are gone), whose series the caller drops."""
        present: dict[int, dict[str, Any]] = {}
        freed = []
        for ns in namespaces:
            ino = ns.get("netns")
            if not isinstance(ino, int):
                continue
            present[ino] = ns
            cookie = ns.get("cookie")
            if isinstance(cookie, int):
                if self._cookies.get(ino, cookie) != cookie:
                    # the inode now belongs to another namespace (the old
                    # one is gone): neither its name nor its slot carry over
                    self._names.pop(ino, None)
                    self._unresolved.discard(ino)
                    slot = self._slots.pop(ino, None)
                    if slot is not None and all(s.label != slot.label for s in self._slots.values()):
                        freed.append(slot.label)
                self._cookies[ino] = cookie
            if isinstance(ns.get("name"), str) and ns["name"]:
                self._names.setdefault(ino, text(ns["name"]))
        for ino, slot in list(self._slots.items()):
            if ino in present:
                slot.activity = _activity(present[ino])
                slot.last_seen = max(slot.last_seen, t)
            elif t - slot.last_seen > self.grace_s:
                del self._slots[ino]
                if all(s.label != slot.label for s in self._slots.values()):
                    freed.append(slot.label)
        waiting = sorted((ino for ino in present if ino not in self._slots),
                         key=lambda i: (self._names.get(i) != "init", -_activity(present[i]), i))
        for ino in waiting:
            if len(self._slots) >= self.cap:
                break
            self._take(ino, t, counted=False, activity=_activity(present[ino]))
        return freed

    def labelled(self) -> dict[int, str]:
        """inode -> label of every namespace that has a slot."""
        return {ino: s.label for ino, s in self._slots.items()}
