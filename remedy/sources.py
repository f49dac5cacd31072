"""Where proposals come from: the analysis's fixes (for resets seen live or
in a recording) and its configuration audit, turned into planner input.

The planner only sees `Proposal`s and `Handover`s; this is the one module that
knows the analysis's `Fix` and `Finding` shapes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from rsttrace.analysis import fixes as F
from rsttrace.analysis.vocab import TIMEOUT_FINDINGS, Cause, FindingKey, Timeout, weight
from rsttrace.remedy import keys as K
from rsttrace.remedy import netns
from rsttrace.remedy.model import Handover, Proposal, Target
from rsttrace.tracer import netnsid

HANDOVER_SCOPES = ("pod", "pool", "kube-proxy", "server")


@dataclass
class Gathered:
    proposals: list[Proposal] = field(default_factory=list)
    handovers: list[Handover] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
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


class SeenNetns:
    """The cookie each namespace inode had in the context snapshots of a
    recording (or a live window): what tells the namespace seen from a later
    one that took its inode. An inode seen with two cookies was reused
    while recording; which one a fix is for cannot be told."""

    def __init__(self) -> None:
        self._cookies: dict[int, set[int]] = {}

    def add_header(self, header: dict[str, Any]) -> None:
        """The cookies of every namespace read when the recording began."""
        cookies = header.get("netns_cookies")
        for k, v in (cookies.items() if isinstance(cookies, dict) else ()):
            ino, cookie = _int(int(k)) if str(k).isdigit() else None, _int(v)
            if ino is not None and cookie is not None:
                self._cookies.setdefault(ino, set()).add(cookie)

    def add_ctx(self, rec: dict[str, Any]) -> None:
        for n in rec.get("namespaces") or ():
            if not isinstance(n, dict):
                continue
            ino, cookie = _int(n.get("netns")), _int(n.get("cookie"))
            if ino is not None and cookie is not None:
                self._cookies.setdefault(ino, set()).add(cookie)

    def cookies(self, inode: int) -> set[int]:
        return self._cookies.get(inode, set())


Finder = Callable[[int, "str | None", "int | None"], netns.Located]


def target_for(fix: Any, node: Target, seen: SeenNetns | None = None,
               find: Finder = netns.locate) -> netns.Located:
    """The namespace a fix applies to: the node's for scope "node" (and for
    "init"), else the live namespace that is the one the fix's inode and name
    were seen as (with the cookie the snapshots gave it)."""
    if fix.scope == "node" or fix.netns_name == "init":
        return netns.Located(node)
    if fix.netns is None:
        return netns.Located(None, f"the namespace of {fix.key} is not known")
    ino = int(fix.netns)
    cookies = seen.cookies(ino) if seen is not None else set()
    if len(cookies) > 1:
        return netns.Located(None, f"inode {ino} was two namespaces during the recording "
                                   f"(one was deleted and the next took its inode); which "
                                   f"one {fix.netns_name or 'it'} is cannot be told")
    return find(ino, fix.netns_name, next(iter(cookies)) if cookies else None)


def _weak_warning(label: str) -> str:
    why = ("this kernel does not report namespace cookies (before 5.14)"
           if not netnsid.supported() else "the recording has no namespace cookie for it")
    return (f"namespace {label} is identified by inode and name only ({why}): "
            "make sure it is the namespace the resets happened in")


def _once(lines: list[str], line: str) -> None:
    """Each verdict brings its fixes again: say a thing once."""
    if line not in lines:
        lines.append(line)


def _why(f: Any) -> str:
    """A fix's reason; for one merged over incidents, what it covers."""
    covers = getattr(f, "covers", ())
    return f.reason + (" (one value for: " + "; ".join(covers) + ")" if len(covers) > 1 else "")


def _hand_over(g: Gathered, seen_text: set[tuple[str, str]], f: Any) -> None:
    text = (f.snippet or f.command or "").strip()
    if text and ("command", text) not in seen_text:
        seen_text.add(("command", text))
        g.handovers.append(Handover("command", f.key, text, _why(f)))


def add_fixes(g: Gathered, fixes: Iterable[Any], node: Target, seen: SeenNetns | None = None,
              find: Finder = netns.locate) -> None:
    seen_text = {(h.scope, h.text) for h in g.handovers}
    located: dict[tuple[Any, Any], netns.Located] = {}
    for f in fixes:
        if f.scope in HANDOVER_SCOPES:
            text = (f.snippet or f.command or "").strip()
            if text and (f.scope, text) not in seen_text:
                seen_text.add((f.scope, text))
                g.handovers.append(Handover(f.scope, f.key, text, _why(f)))
            continue
        value = _int(f.value)
        try:
            K.spec_for(f.key)
            known = value is not None
        except K.UnknownKey:
            known = False
        if not known and f.netns is None:
            _hand_over(g, seen_text, f)   # no namespace to find: as the analysis wrote it
            continue
        key = (f.netns, f.netns_name)
        if key not in located:
            located[key] = target_for(f, node, seen, find)
            t = located[key].target
            if located[key].weak and t is not None:
                _once(g.warnings, _weak_warning(t.label))
        where = located[key]
        if where.target is None:
            _once(g.notes, f"{f.key}={f.value}: {where.why}; not planned")
            continue
        if f.netns_name not in (None, "init") and where.target.label != f.netns_name:
            # Found under another name (or through another process): a
            # printed command must enter the namespace the plan names.
            f = F.retarget(f, where.target.label)
        if not known:
            _hand_over(g, seen_text, f)   # not a value rsttrace sets (e.g. an nftables rule)
            continue
        g.proposals.append(Proposal(where.target, K.canonical(f.key), value, _why(f), f.cause))


def fixes_from_ctx(ctx: dict[str, Any], ram_bytes: int | None) -> list[Any]:
    """The analysis's config audit of one ctx record, each finding turned into
    the fixes the analysis itself would compute for it."""
    from rsttrace.analysis.config import audit

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
        if finding.pair == (Timeout.IPVS_TCP, Timeout.CT_ESTABLISHED) and vs is not None and est is not None:
            out += F.timeout_mismatch_fixes(where, est, vs, ka)
        elif finding.key in TIMEOUT_FINDINGS and ka is not None:
            limits = [v for v in (vs, est) if v is not None]
            limits += [float(x) for x in finding.values[1:2] if isinstance(x, (int, float))]
            if limits:
                label = Timeout.IPVS_TCP if vs is not None and min(limits) == vs else Timeout.CT_ESTABLISHED
                out += F.keepalive_fixes(where, ka, min(limits), label)
        elif finding.key in (FindingKey.CT_FULL, FindingKey.CT_NEAR_FULL):
            out += F.conntrack_full_fixes(ct.get("max"), ct.get("buckets"), int(ct.get("count") or 0),
                                          finding.key == FindingKey.CT_FULL, ram_bytes)
        elif finding.key == FindingKey.BUCKETS and isinstance(ct.get("max"), int):
            need = math.ceil(ct["max"] / 4)
            out.append(F.Fix(Cause.CONNTRACK_FULL, "node", None, None, K.CT_BUCKETS, ct.get("buckets"),
                             need, f"sysctl -w {K.CT_BUCKETS}={need}", None, finding.message))
    return out


def from_records(records: Iterable[dict[str, Any]], header: dict[str, Any], node: Target,
                 ram_bytes: int | None, g: Gathered | None = None,
                 find: Finder = netns.locate) -> Gathered:
    """Classify every reset of a recording (or a live window) and audit its
    last context snapshot; each fix's namespace is the live one that has the
    inode, name and cookie the snapshots recorded (`find`)."""
    from rsttrace.analysis.classify import Classifier
    from rsttrace.analysis.pump import Pump, batches_of

    g = g or Gathered()
    names = {int(k): v for k, v in (header.get("netns_names") or {}).items() if str(k).isdigit()}
    # a recording is read whole: look ahead, as a report does
    clf = Classifier(netns_names=names, ram_bytes=ram_bytes, look_ahead=True)
    seen = SeenNetns()
    seen.add_header(header)
    last_ctx = None
    # Verdicts are taken as they are decided (memory stays bounded for a
    # recording of any size): their fixes go into one book, one value per
    # setting for every incident. Their namespaces are looked up at the
    # end, when every snapshot's cookies are known.
    book = F.FixBook()

    def take(verdicts: list[Any]) -> None:
        for v in verdicts:
            g.causes[v.cause] = g.causes.get(v.cause, 0) + v.count
            book.add(v.fixes)

    def observed() -> Iterator[dict[str, Any]]:
        nonlocal last_ctx
        for rec in records:
            kind = rec.get("kind")
            if kind == "ctx":
                last_ctx = rec
                seen.add_ctx(rec)
            elif kind == "reset" or kind == "reset_agg":
                g.resets += weight(rec)
            yield rec

    Pump(clf, take).run(batches_of(observed()))
    add_fixes(g, book.merged(), node, seen, find)
    if last_ctx is not None:
        add_fixes(g, fixes_from_ctx(last_ctx, ram_bytes), node, seen, find)
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
            s.flush_storms()   # storm mode's last counts
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
    seen = SeenNetns()
    seen.add_ctx(ctx)
    add_fixes(g, fixes_from_ctx(ctx, ram_bytes), node, seen)
    return g
