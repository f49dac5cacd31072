"""Conntrack trouble whether or not it reset anything.

A full conntrack table mostly drops SYNs, so clients see connect timeouts
and no reset at all: the reset classifier never hears of it. This module
reports the table-full episodes a `ContextStore` tracked (per namespace:
"table full" log lines, `drop`/`early_drop` rises, count >= 95 % of max;
netfilter drops only add to an episode, they cannot make one), each with
evidence, a confidence and the fix sized from what was seen. The report's
summary and the lab's diagnosis both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Iterable

from .context import ContextStore, Episode
from .fixes import Fix, conntrack_full_fixes
from .vocab import Confidence


@dataclass(frozen=True)
class ConntrackEpisode:
    netns: int | None
    label: str                 # "netns lb (4026532247)"; "netns ?" for lines naming none
    t_first: float
    t_last: float
    confidence: Confidence     # high: log line or count >= 95 %; medium: drop counters only
    evidence: str              # the facts and where
    facts: str                 # the facts alone
    fixes: list[Fix]
    raw: Episode


def conntrack_episodes(source: ContextStore | Iterable[dict[str, Any]], *, window_s: float = 10.0,
                       since: float | None = None, until: float | None = None,
                       netns: Collection[int | None] | None = None,
                       netns_names: dict[Any, str] | None = None,
                       ram_bytes: int | None = None) -> list[ConntrackEpisode]:
    """Table-full episodes overlapping [since, until], in order of their
    start. `source` is a ContextStore (what a Classifier has seen) or
    records (docs/EVENTS.md; resets are ignored). `netns` keeps only these
    namespaces (None in it keeps lines that named no namespace)."""
    if isinstance(source, ContextStore):
        store = source
    else:
        store = ContextStore(window_s, netns_names=netns_names)
        for rec in source:
            store.add(rec)
    return [_describe(store, ep, ram_bytes) for ep in store.conntrack_episodes(since, until, netns)]


def _describe(store: ContextStore, ep: Episode, ram_bytes: int | None) -> ConntrackEpisode:
    facts: list[str] = []
    label = store.label(ep.netns)
    if ep.log_lines:
        facts.append(f"\"table full\" logged {ep.log_lines}x"
                     + (" (namespace not named in the log)" if ep.netns is None else ""))
    if ep.fullest:
        c, m = ep.fullest
        facts.append(f"count {c}/{m} ({c / m:.0%})")
    if ep.drop:
        facts.append(f"drop +{ep.drop}")
    if ep.early_drop:
        facts.append(f"early_drop +{ep.early_drop}")
    if ep.netfilter_drops:
        facts.append(f"{ep.netfilter_drops} netfilter drops")
    dur = ep.t_last - ep.t_first
    where = f"in {label} for {dur:.0f} s" if dur >= 1 else f"in {label}"
    conf = Confidence.HIGH if ep.log_lines or ep.full_snapshots else Confidence.MEDIUM
    full_seen = bool(ep.log_lines or ep.full_snapshots)
    fixes = conntrack_full_fixes(ep.max, ep.buckets, ep.peak_count, full_seen, ram_bytes)
    return ConntrackEpisode(ep.netns, label, ep.t_first, ep.t_last, conf, "; ".join(facts + [where]),
                            "; ".join(facts), fixes, ep)
