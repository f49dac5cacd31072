"""What the exporter has counted so far: pure Python, no kernel, no HTTP.

`ExportState.ingest(records)` takes the source's records (docs/EVENTS.md)
in stream order: resets go through the classifier (analysis/pump.py) and
are counted by cause when their verdict is out (after the classifier's
pairing window); `ct_drop` / `ct_full` are counted as they come; the
newest `ctx` record is kept whole for the gauges. `tick()` lets verdicts
out by the source's clock when no new record arrives. The HTTP thread
reads a consistent copy with `view()`.

Memory is bounded: counters are keyed by (cause, direction, netns label)
with a bounded label set (exporter/netns.py), the classifier's own state
is bounded (analysis/classify.py), and only the newest ctx is kept.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rsttrace.analysis.classify import Classifier, Verdict
from rsttrace.analysis.pump import Clock, Pump
from rsttrace.analysis.vocab import CAUSES, weight

from .netns import NetnsLabels


@dataclass
class View:
    """A copy of the state for one scrape."""
    resets: dict[tuple[str, str, str], int]
    incidents: dict[str, int]
    nf_drops: dict[str, int]
    full_logs: dict[str, int]
    namespaces: list[tuple[str, dict[str, Any]]]   # (label, ctx entry) of labelled namespaces
    omitted: int
    ctx_t: float | None
    header: dict[str, Any] = field(default_factory=dict)
    node: str = ""


class ExportState:
    def __init__(self, classifier: Classifier | None = None, labels: NetnsLabels | None = None,
                 header: dict[str, Any] | None = None, node: str | None = None,
                 clock: Clock | None = None):
        self.header = dict(header or {})
        # the recording's node (else its host) when replaying one
        self.node = node or str(self.header.get("node") or self.header.get("host") or "")
        names = self.header.get("netns_names") or {}
        self.classifier = classifier or Classifier(netns_names=names)
        # `clock`: the source's (analysis.pump.clock_of); tick() asks it
        self._decided: list[Verdict] = []
        self.pump = Pump(self.classifier, self._take, clock or time.time)
        self.labels = labels or NetnsLabels(names=names)
        self._lock = threading.Lock()
        self.resets: Counter[tuple[str, str, str]] = Counter()
        # every cause present from the start, so rate()/increase() see the first incident
        self.incidents: dict[str, int] = dict.fromkeys(CAUSES, 0)
        self.nf_drops: Counter[str] = Counter()
        self.full_logs: Counter[str] = Counter()
        self._ctx: dict[str, Any] | None = None
        self.verdicts = 0

    @property
    def has_ctx(self) -> bool:
        """A context snapshot has been taken."""
        return self._ctx is not None

    # -- input (the polling thread) ----------------------------------------
    def ingest(self, records: list[dict[str, Any]]) -> list[Verdict]:
        """Counts `records`; returns the verdicts decided meanwhile."""
        with self._lock:
            for rec in records:
                kind = rec.get("kind")
                t = rec.get("t")
                t = float(t) if isinstance(t, (int, float)) else 0.0
                if kind == "ct_drop":
                    self.nf_drops[self.labels.for_event(rec.get("netns"), t)] += 1
                elif kind == "ct_full":
                    self.full_logs[self.labels.for_event(rec.get("netns"), t)] += 1
                elif kind == "ctx":
                    self._take_ctx(rec, t)
            self.pump.feed(records)
            return self._handed()

    def tick(self, now: float | None = None) -> list[Verdict]:
        """Decides what waited its pairing window by `now` (default: the
        source's clock)."""
        with self._lock:
            self.pump.tick(now)
            return self._handed()

    def flush(self) -> list[Verdict]:
        """Decides every open incident now (the source ended)."""
        with self._lock:
            self.pump.flush()
            return self._handed()

    def _take(self, verdicts: list[Verdict]) -> None:
        self._count(verdicts)
        self._decided += verdicts

    def _handed(self) -> list[Verdict]:
        out, self._decided = self._decided, []
        return out

    def _take_ctx(self, rec: dict[str, Any], t: float) -> None:
        self._ctx = rec
        for label in self.labels.observe(rec.get("namespaces") or (), t):
            self._drop_label(label)

    def _drop_label(self, label: str) -> None:
        for key in [k for k in self.resets if k[2] == label]:
            del self.resets[key]
        self.nf_drops.pop(label, None)
        self.full_logs.pop(label, None)

    def _count(self, verdicts: list[Verdict]) -> None:
        # summed by (cause, direction, namespace) first: a storm's thousands
        # of verdicts take one label lookup per namespace
        incidents = self.incidents
        by: dict[tuple[str, Any, Any], int] = {}
        newest = 0.0
        for v in verdicts:
            cause = v.cause
            # a storm's verdict (storm mode's reset_agg records) stands for
            # `count` incidents, each of its records for `count` resets
            incidents[cause] = incidents.get(cause, 0) + v.count
            if v.t > newest:
                newest = v.t
            for ev in v.events:
                key = (cause, ev.get("dir"), ev.get("netns"))
                n = weight(ev)
                try:
                    by[key] = by.get(key, 0) + n
                except TypeError:       # a replayed record's netns that is no number
                    key = (cause, key[1], None)
                    by[key] = by.get(key, 0) + n
        self.verdicts += len(verdicts)
        for (cause, direction, ns), n in by.items():
            label = self.labels.for_event(ns, newest)
            self.resets[(cause, "sent" if direction == "sent" else "recv", label)] += n

    # -- output (the HTTP thread) -----------------------------------------
    def view(self) -> View:
        with self._lock:
            labelled = self.labels.labelled()
            nss = []
            omitted = 0
            for ns in (self._ctx or {}).get("namespaces") or ():
                label = labelled.get(ns.get("netns"))
                if label is not None:
                    nss.append((label, ns))
                else:
                    omitted += 1
            t = (self._ctx or {}).get("t")
            return View(dict(self.resets), dict(self.incidents), dict(self.nf_drops),
                        dict(self.full_logs), nss, omitted,
                        float(t) if isinstance(t, (int, float)) else None, self.header, self.node)
