"""The live screen's state, kept apart from Textual so it is tested as plain
logic: a bounded ring of rows, filters, pause, per-cause counters, the
reset-rate history and the latest context per namespace.

Memory and per-batch cost are bounded by `capacity` (rows kept) and
`RATE_WINDOW_S` (seconds of history), never by how many events were seen.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from rsttrace.analysis.classify import Verdict
from rsttrace.analysis.config import Finding
from rsttrace.analysis.fixes import FixBook
from rsttrace.tui.rows import Row, fold_storm

RATE_WINDOW_S = 300  # the reset-rate chart covers the last five minutes


class FilterError(ValueError):
    """A filter the user typed that cannot be understood."""


@dataclass(frozen=True)
class FilterSpec:
    """`/` filter: space-separated terms, all must match.

    `port:3306` or `3306`, `cause:keep`, `netns:lb`, `addr:10.0.0.2` (or a
    bare address); any other bare word matches cause, netns or process.
    """
    ports: frozenset[int] = frozenset()
    causes: tuple[str, ...] = ()
    netns: tuple[str, ...] = ()
    addrs: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "FilterSpec":
        ports: set[int] = set()
        causes, netns, addrs, words = [], [], [], []
        for term in text.split():
            key, sep, val = term.partition(":")
            key = key.lower()
            if sep and key in ("port", "cause", "netns", "ns", "pod", "addr", "ip"):
                if not val:
                    raise FilterError(f"'{term}' has no value: write e.g. {key}:…")
                if key == "port":
                    if not val.isdigit() or not 0 < int(val) < 65536:
                        raise FilterError(f"'{val}' is not a port: write port:1-65535")
                    ports.add(int(val))
                elif key == "cause":
                    causes.append(val.lower())
                elif key in ("netns", "ns", "pod"):
                    netns.append(val)
                else:
                    addrs.append(val)
            elif term.isdigit():
                if not 0 < int(term) < 65536:
                    raise FilterError(f"'{term}' is not a port: ports are 1-65535")
                ports.add(int(term))
            elif _is_addr(term):
                addrs.append(term)
            else:
                words.append(term.lower())
        return cls(frozenset(ports), tuple(causes), tuple(netns), tuple(addrs), tuple(words),
                   " ".join(text.split()))

    def __bool__(self) -> bool:
        return bool(self.ports or self.causes or self.netns or self.addrs or self.words)

    def matches(self, row: Row) -> bool:
        if self.ports and not (self.ports & row.ports):
            return False
        if any(c not in row.cause.lower() for c in self.causes):
            return False
        if any(not any(n == k or n in k for k in row.netns_keys) for n in self.netns):
            return False
        if any(not any(a.strip("[]") == r or r.startswith(a.strip("[]")) for r in row.addrs) for a in self.addrs):
            return False
        for w in self.words:
            hay = (row.cause.lower(), row.process.lower(), *(k.lower() for k in row.netns_keys))
            if not any(w in h for h in hay):
                return False
        return True


_ADDR_CHARS = set("0123456789abcdefABCDEF:.[]")


def _is_addr(s: str) -> bool:
    """An address or the start of one (`10.0.1`, `fd00::`): typed to narrow
    to a subnet's resets."""
    try:
        ipaddress.ip_address(s.strip("[]"))
        return True
    except ValueError:
        return ("." in s or ":" in s) and set(s) <= _ADDR_CHARS and any(c.isdigit() for c in s)


class RateHistory:
    """Counts per whole second of event time, for the last `window` seconds."""

    def __init__(self, window: int = RATE_WINDOW_S):
        self.window = window
        self.bins: dict[int, int] = {}

    def add(self, t: float, n: int = 1) -> None:
        s = int(t)
        self.bins[s] = self.bins.get(s, 0) + n

    def merge(self, bins: dict[int, int]) -> None:
        for s, n in bins.items():
            self.bins[s] = self.bins.get(s, 0) + n

    def trim(self, now: float) -> None:
        floor = int(now) - self.window
        if len(self.bins) > self.window * 2 or any(s < floor for s in self.bins):
            self.bins = {s: n for s, n in self.bins.items() if s >= floor}

    def series(self, now: float, seconds: int | None = None) -> list[float]:
        """Counts of the `seconds` whole seconds before `now`, oldest first."""
        n = seconds or self.window
        end = int(now)
        return [float(self.bins.get(s, 0)) for s in range(end - n, end)]

    def last_second(self, now: float) -> int:
        """The last complete second (the current one is still filling)."""
        return self.bins.get(int(now) - 1, 0)


@dataclass
class NsContext:
    """What the panels show for one namespace, from its latest ctx record."""
    netns: int
    name: str
    ct: dict[str, Any] | None = None
    ct_first: dict[str, Any] | None = None  # first values seen: rises are shown against it
    sysctl: dict[str, Any] = field(default_factory=dict)
    ipvs: dict[str, Any] | None = None
    nat: bool = False
    ct_full_events: int = 0  # "table full" kernel log lines
    raw: dict[str, Any] | None = None  # the ctx entry as recorded (for the config audit)

    def rise(self, key: str) -> int:
        if not self.ct or not self.ct_first:
            return 0
        try:
            return int(self.ct.get(key) or 0) - int(self.ct_first.get(key) or 0)
        except (TypeError, ValueError):
            return 0


@dataclass
class Batch:
    """What the worker hands to the screen at once (about every 100 ms)."""
    rows: deque[Row]
    rows_dropped: int = 0  # verdicts beyond capacity in this batch: counted, not kept
    cause_counts: Counter[str] = field(default_factory=Counter)
    reset_bins: dict[int, int] = field(default_factory=dict)
    event_bins: dict[int, int] = field(default_factory=dict)
    ctx: dict[int, dict[str, Any]] = field(default_factory=dict)  # latest per netns
    ctx_t: float | None = None
    ct_full: Counter[int] = field(default_factory=Counter)
    netns_names: dict[int, str] = field(default_factory=dict)
    # the distinct fix lists of the batch's verdicts, dropped rows included:
    # the fix plan merges what every incident asked for
    fix_lists: dict[int, list[Any]] = field(default_factory=dict)
    now: float = 0.0
    events: int = 0  # source totals at batch time
    lost: int = 0
    invalid: int = 0  # replay: recorded lines skipped because they did not validate
    source_done: bool = False

    @classmethod
    def empty(cls, capacity: int) -> "Batch":
        return cls(rows=deque(maxlen=capacity))

    def add_row(self, row: Row) -> None:
        if len(self.rows) == self.rows.maxlen:
            self.rows_dropped += self.rows[0].count
        self.rows.append(row)
        self.cause_counts[row.cause] += row.count
        fixes = row.verdict.fixes
        if fixes:
            self.fix_lists.setdefault(id(fixes), fixes)
        s = int(row.t)
        self.reset_bins[s] = self.reset_bins.get(s, 0) + row.count

    def add_record(self, rec: dict[str, Any]) -> None:
        kind = rec.get("kind")
        t = rec.get("t")
        if kind == "ctx":
            self.ctx_t = t if isinstance(t, (int, float)) else self.ctx_t
            for ns in rec.get("namespaces") or []:
                try:
                    inode = int(ns["netns"])
                except (KeyError, TypeError, ValueError):
                    continue
                self.ctx[inode] = ns
                if ns.get("name"):
                    self.netns_names[inode] = str(ns["name"])
            return
        if isinstance(t, (int, float)):
            s = int(t)
            self.event_bins[s] = self.event_bins.get(s, 0) + 1
        ns = rec.get("netns")
        if kind == "ct_full":
            self.ct_full[ns if isinstance(ns, int) else -1] += 1


class LiveState:
    def __init__(self, capacity: int = 2000):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.ring: deque[Row] = deque(maxlen=capacity)  # oldest left
        self.view: deque[Row] = deque()  # ring ∩ filter, oldest left
        self.pending: deque[Row] = deque(maxlen=capacity)  # arrived while paused
        self.paused = False
        self.filter = FilterSpec()
        self.cause_filter: str | None = None
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.resets = RateHistory()
        self.events_rate = RateHistory(window=5)
        self.namespaces: dict[int, NsContext] = {}
        # every cookie each namespace inode had in the snapshots: what tells
        # the namespace a fix is for from a later one that took its inode
        self.netns_cookies: dict[int, set[int]] = {}
        self.findings: list[Finding] = []  # the config audit of the latest context (a worker's)
        self.ct_full_unknown = 0  # table-full lines without a netns
        self.now = 0.0
        self.events = 0
        self.lost = 0
        self.invalid = 0
        self.source_done = False
        self.error: str | None = None  # why the source stopped (set by the app's worker handler)
        self.version = 0  # bumped when the table's view changes
        self.fixbook = FixBook()  # one value per setting over every incident seen
        self.storms: dict[tuple, Row] = {}  # a storm's row by its key (Row.storm_key)

    # -- batches -----------------------------------------------------------
    def apply(self, b: Batch) -> int:
        """Folds a batch in; returns how many rows were added to the view."""
        self.total += sum(r.count for r in b.rows) + b.rows_dropped
        self.counts.update(b.cause_counts)
        self.resets.merge(b.reset_bins)
        self.events_rate.merge(b.event_bins)
        self.now = max(self.now, b.now)
        self.resets.trim(self.now)
        self.events_rate.trim(self.now)
        self.events, self.lost, self.invalid = b.events, b.lost, b.invalid
        self.source_done = b.source_done
        for fixes in b.fix_lists.values():
            self.fixbook.add(fixes)
        for inode, ns in b.ctx.items():
            self._ctx(inode, ns)
        for inode, name in b.netns_names.items():
            if inode in self.namespaces:
                self.namespaces[inode].name = name
        for inode, n in b.ct_full.items():
            if inode == -1:
                self.ct_full_unknown += n
            else:
                self._ns(inode, b.netns_names).ct_full_events += n
        if self.paused:
            self.pending.extend(b.rows)
            return 0
        return self._add_rows(b.rows)

    def _ns(self, inode: int, names: dict[int, str]) -> NsContext:
        ns = self.namespaces.get(inode)
        if ns is None:
            ns = self.namespaces[inode] = NsContext(inode, names.get(inode, str(inode)))
        return ns

    def _ctx(self, inode: int, rec: dict[str, Any]) -> None:
        ns = self._ns(inode, {})
        ns.name = str(rec.get("name") or ns.name)
        ct = rec.get("ct")
        ns.ct = ct if isinstance(ct, dict) else None
        if ns.ct is not None and ns.ct_first is None:
            ns.ct_first = dict(ns.ct)
        ns.sysctl = dict(rec.get("sysctl") or {})
        ipvs = rec.get("ipvs")
        ns.ipvs = ipvs if isinstance(ipvs, dict) else None
        ns.nat = bool(rec.get("nat"))
        ns.raw = rec
        cookie = rec.get("cookie")
        if isinstance(cookie, int):
            self.netns_cookies.setdefault(inode, set()).add(cookie)

    def _add_rows(self, rows: Iterable[Row]) -> int:
        added = 0
        for r in rows:
            if r.count > 1 and self._fold(r):
                continue
            self.ring.append(r)
            if r.count > 1:
                self.storms[r.storm_key] = r
            if self._visible(r):
                self.view.append(r)
                added += 1
        # Rows that fell out of the ring leave the view too.
        oldest = self.ring[0].seq if self.ring else 0
        while self.view and self.view[0].seq < oldest:
            self.view.popleft()
        if len(self.storms) > self.capacity:   # storms whose rows left the ring
            self.storms = {k: r for k, r in self.storms.items() if r.seq >= oldest}
        if added:
            self.version += 1
        return added

    def _fold(self, r: Row) -> bool:
        """A storm's counts into its row, in place, while that row is still
        in the ring; False: it is a row of its own."""
        old = self.storms.get(r.storm_key)
        if old is None or not self.ring or old.seq < self.ring[0].seq:
            return False
        new = self.storms[r.storm_key] = fold_storm(old, r)
        for rows in (self.ring, self.view):
            i = _seq_index(rows, old.seq)
            if i is not None:
                rows[i] = new
        self.version += 1
        return True

    # -- user actions ------------------------------------------------------
    def _visible(self, r: Row) -> bool:
        if self.cause_filter is not None and r.cause != self.cause_filter:
            return False
        return self.filter.matches(r)

    def _rebuild(self) -> None:
        self.view = deque(r for r in self.ring if self._visible(r))
        self.version += 1

    def set_filter(self, text: str) -> FilterSpec:
        self.filter = FilterSpec.parse(text)  # raises FilterError before changing anything
        self._rebuild()
        return self.filter

    def cycle_cause(self) -> str | None:
        """Next cause seen so far (most frequent first), then back to all."""
        causes = [c for c, _ in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        if not causes:
            self.cause_filter = None
        elif self.cause_filter is None or self.cause_filter not in causes:
            self.cause_filter = causes[0] if self.cause_filter is None else None
        else:
            i = causes.index(self.cause_filter)
            self.cause_filter = causes[i + 1] if i + 1 < len(causes) else None
        self._rebuild()
        return self.cause_filter

    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        if not self.paused and self.pending:
            rows, self.pending = list(self.pending), deque(maxlen=self.capacity)
            self._add_rows(rows)
        return self.paused

    # -- reads -------------------------------------------------------------
    def row_at(self, index: int) -> Row | None:
        """The `index`-th row of the view, newest first."""
        if 0 <= index < len(self.view):
            return self.view[len(self.view) - 1 - index]
        return None

    def index_of(self, seq: int) -> int | None:
        """Position (newest first) of the row with `seq`, if still visible."""
        i = _seq_index(self.view, seq)
        return None if i is None else len(self.view) - 1 - i

    def context(self) -> list[dict[str, Any]]:
        """The latest ctx entry of each namespace (what the config audit reads)."""
        return [ns.raw for ns in self.namespaces.values() if ns.raw]

    def seen_namespaces(self) -> list[dict[str, Any]]:
        """Each (namespace, cookie) seen, as ctx entries: what the remedy
        engine needs to find the namespace a fix is for."""
        return [{"netns": ino, "cookie": c} for ino, cs in self.netns_cookies.items() for c in sorted(cs)]

    def retained_verdicts(self) -> list[Verdict]:
        """Verdicts still in memory, oldest first (what `e` exports); a
        storm's row gives the verdicts folded into it too."""
        return [v for r in list(self.ring) + list(self.pending) for v in (*r.merged, r.verdict)]

    def fix_plan(self, row: Row) -> list[Any]:
        """The selected reset's settings, each with the one value that
        satisfies every incident seen (what the `f` screen shows and applies)."""
        return self.fixbook.settle(list(row.verdict.fixes))

    def events_per_s(self) -> int:
        return self.events_rate.last_second(self.now)


def _seq_index(rows: deque[Row], seq: int) -> int | None:
    """Index of the row with `seq` in `rows` (in seq order): a bisection."""
    n = len(rows)
    if not n or seq < rows[0].seq or seq > rows[-1].seq:
        return None
    lo, hi = 0, n - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        s = rows[mid].seq
        if s == seq:
            return mid
        if s < seq:
            lo = mid + 1
        else:
            hi = mid - 1
    return None
