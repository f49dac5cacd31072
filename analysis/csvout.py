"""The report's CSV rows, written as verdicts arrive, and the counts the
summary needs (`Tally`), kept on the way instead of a frame of every row.

Rows come in as plain tuples (fields of the reset record, then its pod and
namespace name) and go out as text: one f-string per row and a cache of
rendered cells, which is what a million rows per run needs.
"""

from __future__ import annotations

import heapq
import time
from typing import Any, TextIO

from .safe import csv_text

# The row fields taken from a reset record, in this order, then `pod` and
# the namespace's name (added by the caller).
ROW_FIELDS = ("t", "dir", "netns", "pid", "comm", "src", "sport", "dst", "dport", "state", "reason",
              "idle_ms", "keepalive", "ka_time_s", "family", "cookie")
# cause, confidence, evidence, fix text, incident, sender netns, receiver netns
VerdictCells = tuple[str, str, str, str, int, Any, Any]

# Times a report can show, in unix seconds: 1970 to the end of year 9999 (a
# CSV time is YYYY-MM-DDTHH:MM:SS.mmmZ).
TIME_MIN, TIME_MAX = 0, 253402300799


class TimeRangeError(ValueError):
    """A time a report cannot show (outside TIME_MIN..TIME_MAX)."""


def time_range_error(sec: Any) -> TimeRangeError:
    return TimeRangeError(f"time out of range: {sec} s since 1970 (rsttrace shows 1970 to 9999)")


def cell(v: Any) -> str:
    """One CSV cell as pandas writes it (minimal quoting), formula-safe, one line."""
    if v is None:
        return ""
    if not isinstance(v, str):
        return str(v)
    v = csv_text(v)
    if "," in v or '"' in v or "\n" in v or "\r" in v:
        return '"' + v.replace('"', '""') + '"'
    return v


class Cells(dict):
    """value -> its CSV cell; a miss renders it (C-speed lookups on hits)."""

    def __missing__(self, v: Any) -> str:
        # large enough for every address of a busy node; cleared, not grown, past it
        if len(self) > 1 << 18:
            self.clear()
        c = self[v] = cell(v)
        return c


class Tally:
    """What the summary counts, kept as rows are written (a few dicts, not
    a frame of every row): rows, incidents, time span, resets per cause,
    per flow and cause, and per second."""

    def __init__(self) -> None:
        self.n = 0
        self.incidents = 0
        self.ms_min: int | None = None
        self.ms_max: int | None = None
        self.causes: dict[str, int] = {}
        self.flows: dict[tuple, int] = {}      # (src, sport, dst, cause) -> rows, first seen first
        self.per_s: dict[int, int] = {}        # unix second -> rows

    def add(self, cause: str, events: list[dict[str, Any]]) -> None:
        """Counts the rows of one verdict (records, for callers without a RowWriter)."""
        for e in events:
            self.row(cause, e.get("src"), e.get("sport"), e.get("dst"), round(e["t"] * 1000))
        if events:
            self.incidents += 1

    def row(self, cause: str, src: Any, sport: Any, dst: Any, ms: int) -> None:
        self.n += 1
        self.causes[cause] = self.causes.get(cause, 0) + 1
        k = (src, sport, dst, cause)
        self.flows[k] = self.flows.get(k, 0) + 1
        sec = ms // 1000
        self.per_s[sec] = self.per_s.get(sec, 0) + 1
        if self.ms_min is None or ms < self.ms_min:
            self.ms_min = ms
        if self.ms_max is None or ms > self.ms_max:
            self.ms_max = ms

    def top_flows(self, top: int, rank: dict[str, int]) -> list[tuple[tuple, int, str]]:
        """((src, sport, dst), rows, main cause), most rows first; ties in
        order of first appearance; a tie between causes goes to the better
        ranked one."""
        per: dict[tuple, dict[str, int]] = {}
        for (src, sport, dst, cause), k in self.flows.items():
            per.setdefault((src, sport, dst), {})[cause] = k
        best = heapq.nlargest(top, per.items(), key=lambda kv: sum(kv[1].values()))
        return [(flow, sum(cs.values()), min(cs.items(), key=lambda kv: (-kv[1], rank.get(kv[0], 99)))[0])
                for flow, cs in best]

    def over_time(self, step: int) -> list[tuple[int, int]]:
        """(bin start in unix s, rows) per `step` seconds, ascending."""
        bins: dict[int, int] = {}
        for sec, k in self.per_s.items():
            b = sec - sec % step
            bins[b] = bins.get(b, 0) + k
        return sorted(bins.items())


class RowWriter:
    """Formats rows into an open text file and counts them."""

    def __init__(self, fh: TextIO):
        self.fh = fh
        self.tally = Tally()
        self._buf: list[str] = []
        self._cells = Cells()
        self._sec: dict[int, str] = {}
        self._idle: dict[int, str] = {}

    def _prefix(self, sec: int) -> str:
        if not TIME_MIN <= sec <= TIME_MAX:
            raise time_range_error(sec)
        if len(self._sec) > 65536:
            self._sec.clear()
        p = self._sec[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return p

    def add(self, vc: VerdictCells, rows: list[tuple]) -> None:
        if not rows:
            return
        c = self._cells
        prefixes = self._sec
        cause, conf, evidence, fix, incident, s_ns, r_ns = vc
        mid = f"{c[cause]},{c[conf]},{c[evidence]},{c[fix]},{incident}"
        tail = f"{'' if s_ns is None else s_ns},{'' if r_ns is None else r_ns}"
        tally = self.tally
        tally.incidents += 1
        tally.n += len(rows)
        tally.causes[cause] = tally.causes.get(cause, 0) + len(rows)
        flows, per_s = tally.flows, tally.per_s
        lo, hi = tally.ms_min, tally.ms_max
        buf = self._buf
        idles = self._idle
        for (t, d, ns, pid, comm, src, sport, dst, dport, state, reason, idle, ka_on, ka, fam, ck,
             pod, name) in rows:
            ms = round(t * 1000)
            sec, frac = divmod(ms, 1000)
            p = prefixes.get(sec) or self._prefix(sec)
            k = (src, sport, dst, cause)
            flows[k] = flows.get(k, 0) + 1
            per_s[sec] = per_s.get(sec, 0) + 1
            if lo is None or ms < lo:
                lo = ms
            if hi is None or ms > hi:
                hi = ms
            if type(idle) is int:
                ic = idles.get(idle)
                if ic is None:
                    if len(idles) > 65536:
                        idles.clear()
                    ic = idles[idle] = f"{idle / 1000.0}"
            else:
                ic = f"{idle / 1000.0}" if isinstance(idle, (int, float)) else ""
            buf.append(
                f"{p}.{frac:03d}Z,{c[d]},{'' if ns is None else ns},{c[pod]},"
                f"{'' if pid is None else pid},{c[comm]},{c[src]},"
                f"{sport if type(sport) is int else c[sport]},{c[dst]},"
                f"{dport if type(dport) is int else c[dport]},{c[state or None]},{c[reason]},"
                f"{ic},"
                f"{'' if ka is None or not ka_on else ka},"
                f"{mid},{c[name]},{tail},{'' if fam is None else fam},{'' if ck is None else ck}\n")
        tally.ms_min, tally.ms_max = lo, hi
        if len(buf) >= 8192:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self.fh.write("".join(self._buf))
            self._buf.clear()
