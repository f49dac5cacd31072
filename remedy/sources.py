"""Where proposals come from: the analysis's fixes (for resets seen live or
in a recording) and its configuration audit, turned into planner input.

The planner only sees `Proposal`s and `Handover`s; this is the one module that
knows the analysis's `Fix` and `Finding` shapes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from rsttrace.remedy import keys as K
from rsttrace.remedy import netns
from rsttrace.remedy.model import Handover, Proposal, Target

HANDOVER_SCOPES = ("pod", "pool", "kube-proxy")


@dataclass
class Gathered:
    proposals: list[Proposal] = field(default_factory=list)
    handovers: list[Handover] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resets: int = 0
    causes: dict[str, int] = field(default_factory=dict)


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def target_for(fix: Any, node: Target,
               find: Callable[[int, str | None], Target | None] = netns.by_inode) -> Target | None:
    """The namespace a fix applies to: the node's for scope "node" (and for
    "init"), else the one its inode names, found by name or by a process."""
    if fix.scope == "node" or fix.netns_name == "init":
        return node
    if fix.netns is None:
        return None
    return find(int(fix.netns), fix.netns_name)


def add_fixes(g: Gathered, fixes: Iterable[Any], node: Target,
              find: Callable[[int, str | None], Target | None] = netns.by_inode) -> None:
    seen = {(h.scope, h.text) for h in g.handovers}
    for f in fixes:
        text = (f.snippet or f.command or "").strip()
        if f.scope in HANDOVER_SCOPES:
            if text and (f.scope, text) not in seen:
                seen.add((f.scope, text))
                g.handovers.append(Handover(f.scope, f.key, text, f.reason))
            continue
        value = _int(f.value)
        try:
            K.spec_for(f.key)
            known = value is not None
        except K.UnknownKey:
            known = False
        if not known:
            # Not a value rsttrace sets (e.g. an nftables rule): hand it over.
            if text and ("command", text) not in seen:
                seen.add(("command", text))
                g.handovers.append(Handover("command", f.key, text, f.reason))
            continue
        target = target_for(f, node, find)
        if target is None:
            g.notes.append(f"{f.key}={value}: namespace {f.netns_name or f.netns} is gone; "
                           "not planned")
            continue
        g.proposals.append(Proposal(target, K.canonical(f.key), value, f.reason, f.cause))


def fixes_from_ctx(ctx: dict[str, Any], ram_bytes: int | None) -> list[Any]:
    """The analysis's config audit of one ctx record, each finding turned into
    the fixes the analysis itself would compute for it."""
    from rsttrace.analysis.config import audit
    from rsttrace.analysis import fixes as F

    by_ns = {n.get("netns"): n for n in ctx.get("namespaces") or []}
    out: list[Any] = []
    for finding in audit(ctx):
        n = by_ns.get(finding.netns) or {}
        sc = n.get("sysctl") or {}
        ct = n.get("ct") or {}
        where = F.Where(finding.netns, n.get("name"))
        ka = _int(sc.get("tcp_keepalive_time"))
        est = _int(sc.get("nf_conntrack_tcp_timeout_established"))
        vs = _int((n.get("ipvs") or {}).get("tcp"))
        if finding.key == "ordering" and vs is not None and est is not None and est < vs:
            out += F.timeout_mismatch_fixes(where, est, vs, ka)
        elif finding.key in ("ordering", "no_margin", "idle_timeout") and ka is not None:
            limits = [v for v in (vs, est) if v is not None]
            limits += [float(x) for x in finding.values[1:2] if isinstance(x, (int, float))]
            if limits:
                label = "IPVS tcp timeout" if vs is not None and min(limits) == vs else \
                    "conntrack established timeout"
                out += F.keepalive_fixes(where, ka, min(limits), label)
        elif finding.key in ("ct_full", "ct_near_full"):
            out += F.conntrack_full_fixes(ct.get("max"), ct.get("buckets"), int(ct.get("count") or 0),
                                          finding.key == "ct_full", ram_bytes)
        elif finding.key == "buckets" and isinstance(ct.get("max"), int):
            need = math.ceil(ct["max"] / 4)
            out.append(F.Fix("conntrack_full", "node", None, None, K.CT_BUCKETS, ct.get("buckets"),
                             need, f"sysctl -w {K.CT_BUCKETS}={need}", None, finding.message))
    return out


def from_records(records: Iterable[dict[str, Any]], header: dict[str, Any], node: Target,
                 ram_bytes: int | None, g: Gathered | None = None,
                 find: Callable[[int, str | None], Target | None] = netns.by_inode) -> Gathered:
    """Classify every reset of a recording (or a live window) and audit its
    last context snapshot; `find` names the namespace an inode belongs to."""
    from rsttrace.analysis.classify import Classifier

    g = g or Gathered()
    names = {int(k): v for k, v in (header.get("netns_names") or {}).items() if str(k).isdigit()}
    clf = Classifier(netns_names=names, ram_bytes=ram_bytes)
    last_ctx = None
    # Verdicts are taken as they are decided (memory stays bounded for a
    # recording of any size); incidents with the same cause in the same
    # place share one list of fixes, added once.
    added: dict[int, list[Any]] = {}

    def take(verdicts: list[Any]) -> None:
        for v in verdicts:
            g.causes[v.cause] = g.causes.get(v.cause, 0) + 1
            if id(v.fixes) not in added:
                added[id(v.fixes)] = v.fixes     # kept: its id is not reused meanwhile
                add_fixes(g, v.fixes, node, find)

    for rec in records:
        if rec.get("kind") == "ctx":
            last_ctx = rec
        elif rec.get("kind") == "reset":
            g.resets += 1
        take(clf.feed(rec))
    take(clf.flush())
    if last_ctx is not None:
        add_fixes(g, fixes_from_ctx(last_ctx, ram_bytes), node, find)
    return g


def observe(seconds: float, node: Target, ram_bytes: int | None,
            only_netns: list[int] | None = None) -> Gathered:
    """Watch the node live for `seconds`, then classify what was seen. When
    BPF cannot attach, fall back to the configuration alone and say so."""
    g = Gathered()
    try:
        from rsttrace.tracer.session import SessionError, TraceSession
    except ImportError as e:
        g.notes.append(f"live tracing unavailable ({e}); planning from the configuration only")
        return config_only(g, node, ram_bytes, only_netns)
    records: list[dict[str, Any]] = []
    try:
        with TraceSession(netns=only_netns, ctx_period_s=max(1.0, seconds / 2)) as s:
            deadline = time.monotonic() + max(0.0, seconds)
            while time.monotonic() < deadline:
                records += s.poll(timeout_s=min(0.2, max(0.01, deadline - time.monotonic())))
            s.snapshot()
            records += s.poll(timeout_s=0.2)
            header = s.header
    except SessionError as e:
        g.notes.append(f"live tracing unavailable ({e}); planning from the configuration only")
        return config_only(g, node, ram_bytes, only_netns)
    return from_records(records, header, node, ram_bytes, g)


def config_only(g: Gathered, node: Target, ram_bytes: int | None,
                 only_netns: list[int] | None) -> Gathered:
    from rsttrace.tracer.context import Collector
    col = Collector(only=only_netns)
    try:
        ctx = col.snapshot()
    finally:
        col.close()
    add_fixes(g, fixes_from_ctx(ctx, ram_bytes), node)
    return g
