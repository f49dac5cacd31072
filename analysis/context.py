"""What the classifier knows about each namespace at the time of a reset.

`ContextStore` keeps, per network namespace, the latest `ctx` entry and the
conntrack counter snapshots of the last window (plus one older snapshot as
the baseline a rise is measured from), the "table full" log lines and the
netfilter drops of the window. Everything older is trimmed, so live use has
bounded memory however long it runs.

It also keeps whole-run totals that stay small (one entry per namespace, one
per table-full episode), which the report needs for conntrack trouble that
caused no reset at all (a full table mostly shows as failed connects).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any

# IEEE ethertypes of IPv4 and IPv6 (a ct_drop's `protocol`; null: unknown)
_IP_ETHERTYPES = (0x0800, 0x86DD, None)


def _grew(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    x, y = a.get(key), b.get(key)
    return isinstance(x, int) and isinstance(y, int) and y > x


@dataclass
class NsTotals:
    """First and last conntrack counters seen for one namespace, for the summary."""
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    peak_count: int = 0
    max: int | None = None
    buckets: int | None = None
    ct_drops: int = 0          # `ct_drop` records (netfilter drops) in this namespace
    full_lines: int = 0        # "table full" log lines naming this namespace


FULL_RATIO = 0.95
MAX_EPISODES = 10_000   # per run; a flapping table beyond this is counted, not kept


@dataclass(slots=True)
class Episode:
    """One namespace's conntrack table in trouble: signals closer together
    than the window belong to one episode. `netns` None: "table full" lines
    that named no namespace (older kernels)."""
    netns: int | None
    t_first: float
    t_last: float
    log_lines: int = 0          # "table full" lines (rate-limited by the kernel: a floor)
    drop: int = 0               # growth of the `drop` counter seen during the episode
    early_drop: int = 0
    netfilter_drops: int = 0    # `ct_drop` records (any netfilter drop: not specific alone)
    full_snapshots: int = 0     # snapshots with count >= 95 % of max
    fullest: tuple[int, int] | None = None   # (count, max) of the fullest snapshot
    peak_count: int = 0
    max: int | None = None
    buckets: int | None = None

    @property
    def confirmed(self) -> bool:
        """A table-full signal, not only netfilter drops (a DROP rule makes those too)."""
        return bool(self.log_lines or self.drop or self.early_drop or self.full_snapshots)

    def note_size(self, ct: dict) -> None:
        """The table's size as a snapshot saw it, for the fix's numbers."""
        c, m, b = ct.get("count"), ct.get("max"), ct.get("buckets")
        if isinstance(c, int) and c > self.peak_count:
            self.peak_count = c
        if isinstance(m, int):
            self.max = m
        if isinstance(b, int):
            self.buckets = b


@dataclass
class Rise:
    counter: str
    netns: int
    before: int
    after: int
    t0: float
    t1: float

    @property
    def delta(self) -> int:
        return self.after - self.before


@dataclass
class _Ns:
    ctx: dict[str, Any]
    times: list[float] = field(default_factory=list)          # snapshot times, ascending
    cts: list[dict[str, Any]] = field(default_factory=list)   # ct dict of each snapshot


class ContextStore:
    def __init__(self, window_s: float = 10.0, slack_s: float = 1.0,
                 netns_names: dict[Any, str] | None = None):
        # slack_s: how long after a reset its verdict may still be pending
        # (the pairing window); history is kept for window + slack.
        self.window_s = float(window_s)
        self.slack_s = float(slack_s)
        self._ns: dict[int, _Ns] = {}
        self._full: deque = deque()     # (t, netns|None)
        self._drops: dict[Any, deque] = {}   # netns -> times of ct_drop records
        # ct_drop records that carry the dropped packet's flow, in arrival
        # order, and the same by each of its two ends (addr, port): what
        # ties a reset to the packet a firewall rule rejected. Records
        # without the flow (older kernels and recordings): (t, netns).
        self._flow_drops: deque = deque()
        self._drops_by_end: dict[tuple, deque] = {}
        self._bare_drops: deque = deque()
        self.names: dict[int, str] = {}
        for k, v in (netns_names or {}).items():
            try:
                self.names[int(k)] = str(v)
            except (TypeError, ValueError):
                continue
        self.totals: dict[int, NsTotals] = {}
        self.episodes: list[Episode] = []          # in order of their first signal
        self._open: dict[Any, Episode] = {}       # netns -> its newest episode
        self.episodes_dropped = 0
        self.last_t: float | None = None
        self.latest_ctx: dict[str, Any] | None = None   # newest `ctx` record (for the audit)
        # Bumped on every change; callers cache what they derive from the store.
        self.version = 0
        self._signals: dict[tuple, tuple] = {}
        # newest snapshot time per netns that showed trouble (drop or
        # early_drop grew, or the table >= 95 % full): lets quiet resets skip
        # the window scan entirely.
        self._trouble: dict[int, float] = {}

    # ---- input ---------------------------------------------------------
    def add(self, rec: dict[str, Any]) -> None:
        kind = rec.get("kind")
        t = rec.get("t")
        if not isinstance(t, (int, float)):
            return
        if kind == "ctx":
            self._add_ctx(t, rec)
        elif kind == "ct_full":
            self._add_full(t, rec.get("netns"))
        elif kind == "ct_drop":
            ns = rec.get("netns")
            self._drops.setdefault(ns, deque()).append(t)
            self._add_drop_flow(t, ns, rec)
            if isinstance(ns, int):
                self._tot(ns).ct_drops += 1
                ep = self._episode(ns, t)
                if ep is not None:
                    ep.netfilter_drops += 1
        else:
            return
        self.version += 1
        if self.last_t is None or t > self.last_t:
            self.last_t = t
            self._trim(t)

    def _tot(self, ns: int) -> NsTotals:
        tot = self.totals.get(ns)
        if tot is None:
            tot = self.totals[ns] = NsTotals()
        return tot

    def _episode(self, ns: Any, t: float) -> Episode | None:
        """The episode of `ns` still open at t (its last signal within the
        window), else a new one."""
        ep = self._open.get(ns)
        if ep is not None and t - ep.t_last <= self.window_s:
            if t > ep.t_last:
                ep.t_last = t
            return ep
        if len(self.episodes) >= MAX_EPISODES:
            self.episodes_dropped += 1
            return None
        ep = self._open[ns] = Episode(ns, t, t)
        slot = self._ns.get(ns) if ns is not None else None
        if slot is not None and slot.cts:
            # The newest snapshot before the episode sizes its fix until a
            # snapshot inside it comes.
            ct = slot.cts[-1]
            c, m, b = ct.get("count"), ct.get("max"), ct.get("buckets")
            ep.peak_count = c if isinstance(c, int) else 0
            ep.max = m if isinstance(m, int) else None
            ep.buckets = b if isinstance(b, int) else None
        self.episodes.append(ep)
        return ep

    def _add_ctx(self, t: float, rec: dict[str, Any]) -> None:
        self.latest_ctx = rec
        for n in rec.get("namespaces") or ():
            ns = n.get("netns")
            if not isinstance(ns, int):
                continue
            name = n.get("name")
            if isinstance(name, str) and name:
                self.names[ns] = name
            slot = self._ns.get(ns)
            if slot is None:
                slot = self._ns[ns] = _Ns(n)
            slot.ctx = n
            ct = n.get("ct")
            if isinstance(ct, dict):
                if slot.times and t < slot.times[-1]:
                    continue    # out of order: a rise is only measured forwards
                prev = slot.cts[-1] if slot.cts else None
                slot.times.append(t)
                slot.cts.append(ct)
                c, m = ct.get("count"), ct.get("max")
                full = isinstance(c, int) and isinstance(m, int) and m > 0 and c >= FULL_RATIO * m
                grew = prev is not None and (_grew(prev, ct, "drop") or _grew(prev, ct, "early_drop"))
                if full or grew:
                    self._trouble[ns] = t
                    ep = self._episode(ns, t)
                    if ep is not None:
                        if full:
                            ep.full_snapshots += 1
                            if ep.fullest is None or c * ep.fullest[1] > ep.fullest[0] * m:
                                ep.fullest = (c, m)
                        if grew:
                            ep.drop += max(0, (ct.get("drop") or 0) - (prev.get("drop") or 0))
                            ep.early_drop += max(0, (ct.get("early_drop") or 0) - (prev.get("early_drop") or 0))
                        ep.note_size(ct)
                else:
                    # A quiet snapshot inside an open episode (e.g. one found
                    # from log lines) still tells its size, for the fix.
                    ep = self._open.get(ns)
                    if ep is not None and t - ep.t_last <= self.window_s:
                        ep.note_size(ct)
                tot = self._tot(ns)
                if tot.first is None:
                    tot.first = ct
                tot.last = ct
                c = ct.get("count")
                if isinstance(c, int) and c > tot.peak_count:
                    tot.peak_count = c
                if isinstance(ct.get("max"), int):
                    tot.max = ct["max"]
                if isinstance(ct.get("buckets"), int):
                    tot.buckets = ct["buckets"]

    def _add_full(self, t: float, ns: Any) -> None:
        ns = ns if isinstance(ns, int) else None
        self._full.append((t, ns))
        if ns is not None:
            self._tot(ns).full_lines += 1
        # Lines closer than the window belong to one episode: the kernel
        # rate-limits the message, so a count of lines means little.
        ep = self._episode(ns, t)
        if ep is not None:
            ep.log_lines += 1

    def _add_drop_flow(self, t: float, ns: Any, rec: dict[str, Any]) -> None:
        src, dst = rec.get("src"), rec.get("dst")
        if not (isinstance(src, str) and isinstance(dst, str)):
            # no flow: recorded before drops carried it, unless the packet
            # was not IP at all (an ARP or bridged frame: no reset answers it)
            if rec.get("protocol") in _IP_ETHERTYPES:
                self._bare_drops.append((t, ns))
            return
        if rec.get("sport") is None:
            return      # an IP packet but no TCP segment read: no reset answers it
        entry = (t, ns, rec)
        self._flow_drops.append(entry)
        for end in ((src, rec.get("sport")), (dst, rec.get("dport"))):
            self._drops_by_end.setdefault(end, deque()).append(entry)

    def _trim_drop_flows(self, horizon: float) -> None:
        q, by_end = self._flow_drops, self._drops_by_end
        while q and q[0][0] < horizon:
            entry = q.popleft()
            rec = entry[2]
            for end in ((rec.get("src"), rec.get("sport")), (rec.get("dst"), rec.get("dport"))):
                dq = by_end.get(end)
                if dq is None:
                    continue
                if dq and dq[0] is entry:
                    dq.popleft()
                else:       # came out of time order: rare
                    try:
                        dq.remove(entry)
                    except ValueError:
                        pass
                if not dq:
                    del by_end[end]
        while self._bare_drops and self._bare_drops[0][0] < horizon:
            self._bare_drops.popleft()

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s - 2 * self.slack_s
        self._trim_drop_flows(horizon)
        for slot in self._ns.values():
            # keep the newest snapshot at or before the horizon as the baseline
            k = bisect_right(slot.times, horizon) - 1
            if k > 0:
                del slot.times[:k]
                del slot.cts[:k]
        while self._full and self._full[0][0] < horizon:
            self._full.popleft()
        for q in self._drops.values():
            while q and q[0] < horizon:
                q.popleft()

    # ---- queries (t: the reset; upto: newest record the verdict may use) ----
    def namespaces(self) -> list[int]:
        return list(self._ns)

    def ctx(self, ns: int | None) -> dict[str, Any] | None:
        slot = self._ns.get(ns) if ns is not None else None
        return slot.ctx if slot else None

    def name(self, ns: int | None) -> str | None:
        return self.names.get(ns) if ns is not None else None

    def label(self, ns: int | None) -> str:
        if ns is None:
            return "netns ?"
        n = self.names.get(ns)
        return f"netns {n} ({ns})" if n else f"netns {ns}"

    def rise(self, ns: int, counter: str, t: float, upto: float) -> Rise | None:
        """The growth of `counter` between the last snapshot at or before
        t - window (else the first in the window) and the last one at or before `upto`."""
        slot = self._ns.get(ns)
        if slot is None:
            return None
        times = slot.times
        last = bisect_right(times, upto) - 1
        base = max(0, bisect_right(times, t - self.window_s) - 1)
        if last <= base:
            return None
        a, b = slot.cts[base].get(counter), slot.cts[last].get(counter)
        if isinstance(a, int) and isinstance(b, int) and b > a:
            return Rise(counter, ns, a, b, times[base], times[last])
        return None

    def covered(self, ns: int, t: float, upto: float) -> bool:
        """`ns`'s conntrack counters were read at or after t (and by upto):
        a rise before the reset would show in them."""
        slot = self._ns.get(ns)
        if slot is None or not slot.times:
            return False
        i = bisect_right(slot.times, upto) - 1
        return i >= 0 and slot.times[i] >= t

    def has_ct(self, ns: int | None) -> bool:
        """Conntrack was seen in `ns`: counters in a snapshot, a netfilter
        drop or a "table full" line naming it."""
        return ns is not None and ns in self.totals

    def quiet(self, ns: int | None, t: float) -> bool:
        """True when no full-table evidence can exist for a reset at t in
        `ns` (None: any namespace)."""
        lo = t - self.window_s
        if self._full and self._full[-1][0] >= lo and (
                ns is None or any(n is None or n == ns for ts, n in self._full if ts >= lo)):
            return False
        for q in (self._drops.values() if ns is None else [self._drops.get(ns) or ()]):
            if q and q[-1] >= lo:
                return False
        if ns is None:
            return all(v <= lo for v in self._trouble.values())
        v = self._trouble.get(ns)
        return v is None or v <= lo

    def signals(self, ns: int, t: float, upto: float) -> tuple:
        """(fullness, drop rise, early_drop rise) for a reset at t: the same
        pair of snapshots gives the same answer, so it is computed once."""
        slot = self._ns.get(ns)
        if slot is None:
            return (None, None, None)
        times = slot.times
        last = bisect_right(times, upto) - 1
        base = max(0, bisect_right(times, t - self.window_s) - 1)
        key = (ns, times[base] if times else None, times[last] if last >= 0 else None)
        hit = self._signals.get(key)
        if hit is None:
            if len(self._signals) > 4096:
                self._signals.clear()
            hit = self._signals[key] = (self.fullness(ns, upto), self.rise(ns, "drop", t, upto),
                                        self.rise(ns, "early_drop", t, upto))
        return hit

    def fullness(self, ns: int, upto: float) -> tuple[int, int] | None:
        """(count, max) of the newest snapshot at or before `upto`."""
        slot = self._ns.get(ns)
        if slot is None:
            return None
        i = bisect_right(slot.times, upto) - 1
        if i < 0:
            return None
        ct = slot.cts[i]
        c, m = ct.get("count"), ct.get("max")
        if isinstance(c, int) and isinstance(m, int) and m > 0:
            return c, m
        return None

    def full_lines(self, ns: int | None, t: float, upto: float, unnamed: bool = True) -> int:
        """"table full" lines naming `ns` (None: any namespace) in
        [t - window, upto]; with `unnamed`, lines naming none count too."""
        if not self._full:
            return 0
        lo = t - self.window_s
        return sum(1 for ts, n in self._full
                   if lo <= ts <= upto and (n is None and unnamed or n is not None and (ns is None or n == ns)))

    def conntrack_episodes(self, since: float | None = None, until: float | None = None,
                           netns: Any = None, confirmed: bool = True) -> list[Episode]:
        """Table-full episodes overlapping [since, until], optionally only
        those of the namespaces in `netns` (a collection of inodes; None
        stays None for lines that named no namespace)."""
        out = []
        for ep in self.episodes:
            if confirmed and not ep.confirmed:
                continue
            if since is not None and ep.t_last < since:
                continue
            if until is not None and ep.t_first > until:
                continue
            if netns is not None and ep.netns not in netns:
                continue
            out.append(ep)
        return out

    def drop_records(self, ns: int | None, t: float, upto: float) -> int:
        lo = t - self.window_s
        queues = self._drops.values() if ns is None else [self._drops.get(ns) or ()]
        n = 0
        for q in queues:
            if q and q[-1] >= lo:
                n += sum(1 for ts in q if lo <= ts <= upto)
        return n

    def drops_at(self, addr: Any, port: Any, t: float, within: float) -> list[tuple[float, Any, dict]]:
        """Netfilter drops of a packet with the end (addr, port), either
        side, within `within` s of t: (time, netns, record)."""
        dq = self._drops_by_end.get((addr, port))
        if not dq:
            return []
        return [e for e in dq if abs(e[0] - t) <= within]

    def bare_drops_at(self, t: float, within: float) -> list[tuple[float, Any]]:
        """Drops recorded without their packet's flow within `within` s of t."""
        out = []
        for e in reversed(self._bare_drops):
            if e[0] < t - within:
                break
            if e[0] <= t + within:
                out.append(e)
        return out

    def peak_count(self, ns: int) -> int:
        tot = self.totals.get(ns)
        return tot.peak_count if tot else 0
