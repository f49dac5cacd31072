"""Root cause of every reset: one code path for live use and for replay.

`Classifier.feed(record)` takes records in stream order (docs/EVENTS.md),
groups the resets of one flow into an incident (the no-socket reset a local
namespace sent and the reset a local socket received for the same tuple,
both written in the reset's own direction), waits `pair_window_s` after the
first reset of the incident for its other half and for fresh context, then
decides the cause. State is bounded: at most `max_pending` open incidents,
context trimmed to the window, a capped table of IPVS expiries.

Causes, first match wins (W = window_s before the reset):
conntrack_full > conntrack_invalid > timeout_mismatch > keepalive >
no_listener > peer_reset > unknown.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .context import ContextStore
from .fixes import (Fix, Where, conntrack_full_fixes, invalid_fixes, keepalive_fixes,
                    timeout_mismatch_fixes)

CAUSES = ("conntrack_full", "conntrack_invalid", "timeout_mismatch", "keepalive",
          "no_listener", "peer_reset", "unknown")
FULL_RATIO = 0.95
IPVS_MEMORY = 65_536   # IPVS expiries remembered to match a later reset

# What a local sender's `enum sk_rst_reason` means for the receiver. Only
# names are used (the kernel's numbers differ between versions); a name not
# listed is shown as it is.
REASON_TEXT = {
    "NO_SOCKET": "no socket matched the segment",
    "TCP_INVALID_ACK_SEQUENCE": "the segment acknowledged data never sent",
    "TCP_RFC7323_PAWS": "PAWS rejected the segment",
    "TCP_TOO_OLD_ACK": "the segment acknowledged old data",
    "TCP_ACK_UNSENT_DATA": "the segment acknowledged unsent data",
    "TCP_FLAGS": "unexpected TCP flags",
    "TCP_OLD_ACK": "an old ACK",
    "TCP_ABORT_ON_DATA": "data arrived after the application closed",
    "TCP_TIMEWAIT_SOCKET": "the segment met a TIME_WAIT socket",
    "INVALID_SYN": "an invalid SYN",
    "TCP_ABORT_ON_CLOSE": "the application closed with unread data",
    "TCP_ABORT_ON_LINGER": "the application closed with SO_LINGER 0",
    "TCP_ABORT_ON_MEMORY": "the socket ran out of memory",
    "TCP_STATE": "the application called disconnect",
    "TCP_KEEPALIVE_TIMEOUT": "keepalive probes went unanswered",
    "TCP_DISCONNECT_WITH_DATA": "disconnect with unread data",
}


@dataclass(slots=True)
class Verdict:
    incident: int
    t: float
    cause: str
    confidence: str            # high | medium | low
    evidence: str
    fixes: list[Fix]
    events: list[dict[str, Any]]   # the reset records of the incident, sent first
    sender_netns: int | None
    receiver_netns: int | None
    src: str
    sport: int
    dst: str
    dport: int


@dataclass(slots=True)
class _Incident:
    t: float
    deadline: float
    sent: list[dict[str, Any]] = field(default_factory=list)
    recv: list[dict[str, Any]] = field(default_factory=list)


def _secs(x: float) -> str:
    return f"{x:.0f} s" if x >= 10 or x == int(x) else f"{x:.1f} s"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class Classifier:
    def __init__(self, window_s: float = 10.0, idle_timeouts: dict[str, float] | None = None,
                 pair_window_s: float = 1.0, max_pending: int = 100_000,
                 netns_names: dict[Any, str] | None = None, ram_bytes: int | None = None):
        if window_s <= 0 or pair_window_s < 0 or max_pending < 1:
            raise ValueError("window_s > 0, pair_window_s >= 0 and max_pending >= 1 are required")
        self.window_s = float(window_s)
        self.pair_window_s = float(pair_window_s)
        self.max_pending = int(max_pending)
        self.idle_timeouts = {str(k): float(v) for k, v in (idle_timeouts or {}).items()}
        self.ram_bytes = ram_bytes
        self.context = ContextStore(self.window_s, self.pair_window_s, netns_names)
        self._pending: dict[tuple, _Incident] = {}
        self._ipvs: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()
        self._next_id = 1
        self._fix_cache: dict[tuple, list[Fix]] = {}
        self._tables_cache: dict[tuple, list] = {}
        self._declared = [(v, f"{k} idle timeout", None) for k, v in self.idle_timeouts.items()]
        self.now: float | None = None

    # ---- stream interface ---------------------------------------------
    def feed(self, rec: dict[str, Any]) -> list[Verdict]:
        t = rec.get("t")
        out: list[Verdict] = []
        if isinstance(t, (int, float)):
            if self.now is None or t > self.now:
                self.now = t
            if self._pending:
                self._expire(t, out)
        kind = rec.get("kind")
        if kind == "reset":
            if isinstance(t, (int, float)):
                self._add_reset(rec, t, out)
        elif kind == "ipvs_expire":
            self._add_ipvs(rec)
        else:
            self.context.add(rec)
        return out

    def tick(self, now_t: float) -> list[Verdict]:
        out: list[Verdict] = []
        self._expire(now_t, out)
        return out

    def flush(self) -> list[Verdict]:
        out = [self._finalise(inc) for inc in self._pending.values()]
        self._pending.clear()
        return out

    # ---- pairing ----------------------------------------------------------
    def _expire(self, now: float, out: list[Verdict]) -> None:
        pend = self._pending
        while pend:
            key = next(iter(pend))
            inc = pend[key]
            if inc.deadline >= now:
                break
            del pend[key]
            out.append(self._finalise(inc))

    def _add_reset(self, rec: dict[str, Any], t: float, out: list[Verdict]) -> None:
        key = (rec.get("src"), rec.get("sport"), rec.get("dst"), rec.get("dport"))
        inc = self._pending.get(key)
        if inc is None:
            if len(self._pending) >= self.max_pending:
                oldest = next(iter(self._pending))
                out.append(self._finalise(self._pending.pop(oldest)))
            inc = self._pending[key] = _Incident(t, t + self.pair_window_s)
        (inc.sent if rec.get("dir") == "sent" else inc.recv).append(rec)

    def _add_ipvs(self, rec: dict[str, Any]) -> None:
        key = (rec.get("vaddr"), rec.get("vport"), rec.get("client"), rec.get("cport"))
        self._ipvs[key] = (rec.get("t"), rec.get("netns"))
        self._ipvs.move_to_end(key)
        if len(self._ipvs) > IPVS_MEMORY:
            self._ipvs.popitem(last=False)

    # ---- the decision -----------------------------------------------------
    def _finalise(self, inc: _Incident) -> Verdict:
        cause, conf, evidence, fixes = self._decide(inc)
        sent, recv = inc.sent, inc.recv
        first = sent[0] if sent else recv[0]
        v = Verdict(self._next_id, inc.t, cause, conf, evidence, fixes, sent + recv,
                    sent[0].get("netns") if sent else None, recv[0].get("netns") if recv else None,
                    first.get("src"), first.get("sport"), first.get("dst"), first.get("dport"))
        self._next_id += 1
        return v

    def _cached(self, key: tuple, make) -> list[Fix]:
        fx = self._fix_cache.get(key)
        if fx is None:
            if len(self._fix_cache) > 4096:
                self._fix_cache.clear()
            fx = self._fix_cache[key] = make()
        return fx

    def _where(self, ns: Any, pid: Any = None) -> Where:
        return Where(ns if isinstance(ns, int) else None, self.context.name(ns),
                     pid if isinstance(pid, int) else None)

    def _decide(self, inc: _Incident) -> tuple[str, str, str, list[Fix]]:
        ctx = self.context
        t, upto = inc.t, inc.deadline
        # The sender that matters is the no-socket one: its namespace's tables
        # are the ones that forgot or refused the flow.
        s = next((e for e in inc.sent if not e.get("has_sock")), inc.sent[0] if inc.sent else None)
        r = inc.recv[0] if inc.recv else None
        s_ns = s.get("netns") if s else None
        r_ns = r.get("netns") if r else None
        syn = bool((s and s.get("syn") is True) or (r and r.get("state") == "SYN_SENT"))
        idle = _num(r.get("idle_ms")) if r else None
        idle = idle / 1000.0 if idle is not None else None

        res = self._full(s_ns if s else None, t, upto)
        if res:
            return res

        # Timeouts of the tables on the path: the sender's namespace when
        # known, else every namespace here that NATs (a guess: medium at best).
        guessed = s is None
        tables = self._tables(s_ns if s is not None else None, guessed)
        declared = self._declared
        expired = self._ipvs_match(inc)

        if s is not None and not s.get("has_sock") and not syn:
            rise = ctx.rise(s_ns, "invalid", t, upto)
            if rise:
                limits = tables + declared
                smallest = min(limits, key=lambda x: x[0]) if limits else None
                idle_past = expired is not None or (
                    idle is not None and smallest is not None and idle >= smallest[0])
                if not idle_past:
                    ev = (f"no-socket reset sent by {ctx.label(s_ns)}; conntrack invalid "
                          f"+{rise.delta} within {self.window_s:g} s")
                    if idle is None:
                        ev += "; idle time unknown (no local socket received it)"
                        conf = "medium"
                    else:
                        ev += f"; idle {_secs(idle)}"
                        if smallest is not None:
                            ev += f" < {smallest[1]} {_secs(smallest[0])}"
                        conf = "high"
                    bl = _num(((ctx.ctx(s_ns) or {}).get("sysctl") or {}).get("nf_conntrack_tcp_be_liberal"))
                    w = self._where(s_ns)
                    return "conntrack_invalid", conf, ev, self._cached(
                        ("inv", w, bl), lambda: invalid_fixes(w, None if bl is None else int(bl)))

        if not syn and (idle is not None or expired is not None):
            res = self._idle(inc, r, s_ns, idle, tables, declared, expired, guessed)
            if res:
                return res

        if syn:
            who = f"{s_ns and ctx.label(s_ns) or 'the peer'}"
            return ("no_listener", "high",
                    f"reset answers a SYN: nothing listens on {(s or r).get('src')}:{(s or r).get('sport')} "
                    f"(refused by {who})", [])

        if r is not None:
            return self._peer(inc, r, s, idle, tables + declared)

        return "unknown", "low", self._seen(s, idle), []

    def _tables(self, s_ns: Any, guessed: bool) -> list[tuple[float, str, Any]]:
        """(seconds, label, netns) of every conntrack/IPVS idle timeout on the path."""
        ctx = self.context
        key = (s_ns, guessed, ctx.version)
        hit = self._tables_cache.get(key)
        if hit is not None:
            return hit
        if len(self._tables_cache) > 1024:
            self._tables_cache.clear()
        path = [ns for ns in ctx.namespaces() if (ctx.ctx(ns) or {}).get("nat")] if guessed else [s_ns]
        tables: list[tuple[float, str, Any]] = []
        for ns in path:
            c = ctx.ctx(ns) or {}
            est = _num((c.get("sysctl") or {}).get("nf_conntrack_tcp_timeout_established"))
            ipvs = _num((c.get("ipvs") or {}).get("tcp"))
            if est is not None:
                tables.append((est, "conntrack established timeout", ns))
            if ipvs is not None:
                tables.append((ipvs, "ipvs tcp timeout", ns))
        self._tables_cache[key] = tables
        return tables

    def _full(self, path_ns: Any, t: float, upto: float) -> tuple[str, str, str, list[Fix]] | None:
        ctx = self.context
        if ctx.quiet(path_ns, t):
            return None
        nss = [path_ns] if path_ns is not None else ctx.namespaces()
        facts: list[str] = []
        strength = 0   # 3 high, 2 medium, 1 low
        full_seen = False
        cur_max = cur_buckets = None
        peak = 0
        lines = ctx.full_lines(path_ns, t, upto)
        if lines:
            strength, full_seen = 3, True
            facts.append(f"\"table full\" logged {lines}x"
                         + (f" in {ctx.label(path_ns)}" if path_ns is not None else "")
                         + f" within {self.window_s:g} s")
        for ns in nss:
            fl, drop, early = ctx.signals(ns, t, upto)
            if fl:
                cur_max = fl[1]
                peak = max(peak, ctx.peak_count(ns), fl[0])
                if fl[0] >= FULL_RATIO * fl[1]:
                    strength, full_seen = 3, True
                    facts.append(f"count {fl[0]}/{fl[1]} ({fl[0] / fl[1]:.0%}) in {ctx.label(ns)}")
            for rise in (drop, early):
                if rise:
                    strength = max(strength, 2)
                    facts.append(f"{rise.counter} +{rise.delta} in {ctx.label(ns)}")
            if strength:
                c = (ctx.ctx(ns) or {}).get("ct") or {}
                if isinstance(c.get("buckets"), int):
                    cur_buckets = c["buckets"]
        drops = ctx.drop_records(path_ns, t, upto)
        if drops:
            strength = max(strength, 1)
            facts.append(f"{drops} netfilter drops"
                         + (f" in {ctx.label(path_ns)}" if path_ns is not None else ""))
        if not strength:
            return None
        conf = {3: "high", 2: "medium", 1: "low"}[strength]
        if path_ns is None:
            facts.append("path unknown: any namespace on this host counted")
        fixes = self._cached(("full", cur_max, cur_buckets, peak, full_seen, self.ram_bytes),
                             lambda: conntrack_full_fixes(cur_max, cur_buckets, peak, full_seen, self.ram_bytes))
        return "conntrack_full", conf, "; ".join(facts), fixes

    def _ipvs_match(self, inc: _Incident) -> tuple[float, Any] | None:
        if not self._ipvs:
            return None
        e = inc.sent[0] if inc.sent else inc.recv[0]
        hit = self._ipvs.get((e.get("src"), e.get("sport"), e.get("dst"), e.get("dport")))
        if hit and isinstance(hit[0], (int, float)) and hit[0] <= inc.t:
            return hit
        return None

    def _idle(self, inc: _Incident, r: dict | None, s_ns: Any, idle: float | None,
              tables: list, declared: list, expired: tuple | None, guessed: bool):
        ctx = self.context
        exp_txt = ""
        if expired is not None:
            exp_txt = f"; IPVS expired this flow {_secs(inc.t - expired[0])} before the reset"
        # timeout mismatch: conntrack forgot (idle >= its timeout) while IPVS
        # in the same namespace still held the flow (idle < IPVS timeout).
        by_ns: dict[Any, dict[str, float]] = {}
        for sec, label, ns in tables:
            by_ns.setdefault(ns, {})["ipvs" if label.startswith("ipvs") else "est"] = sec
        ka_on = r.get("keepalive") if r else None
        # ka_time_s is the effective value even with SO_KEEPALIVE off: it is
        # what the namespace sysctl (or the socket) holds now.
        ka_eff = _num(r.get("ka_time_s")) if r else None
        ka = ka_eff if ka_on else None
        if idle is not None:
            for ns, tv in by_ns.items():
                est, ipvs = tv.get("est"), tv.get("ipvs")
                if est is not None and ipvs is not None and ipvs > est and est <= idle < ipvs:
                    ev = (f"idle {_secs(idle)} >= conntrack established timeout {_secs(est)} in "
                          f"{ctx.label(ns)} while its ipvs tcp timeout {_secs(ipvs)} still held the flow"
                          + exp_txt)
                    w, rw = self._where(ns), self._where(r.get("netns"), r.get("pid")) if r else None
                    return "timeout_mismatch", "medium" if guessed else "high", ev, self._cached(
                        ("tm", w, rw, est, ipvs, ka, ka_eff),
                        lambda: timeout_mismatch_fixes(w, est, ipvs, ka, rw, ka_eff))
        limits = tables + declared
        if not limits:
            return None
        smallest = min(limits, key=lambda x: x[0])
        T, label, ns = smallest
        if idle is not None:
            if idle < T:
                return None
            idle_txt = f"idle {_secs(idle)} >= {label} {_secs(T)}"
        else:
            idle_txt = f"idle >= {label} {_secs(T)} (no local socket; from the IPVS expiry)"
        if ns is not None:
            idle_txt += f" in {ctx.label(ns)}"
        if r is None or ka_on is None:
            ka_txt = "keepalive unknown"
        elif not ka_on:
            ka_txt = "SO_KEEPALIVE off"
        elif ka is None or ka >= T:
            ka_txt = f"keepalive {_secs(ka) if ka is not None else '?'} not below {_secs(T)}"
        else:
            return None   # keepalive was faster than the timeout: not a keepalive problem
        if r is None or ka_on is None:
            conf = "low" if guessed else "medium"   # the socket's keepalive is not known
        elif ns is not None and not guessed:
            conf = "high"
        else:
            conf = "medium"
        ev = f"{idle_txt}; {ka_txt}{exp_txt}"
        if ka is not None and tables and any(ka == sec for sec, _, _ in tables if sec >= T):
            ev += "; keepalive equal to a timeout leaves no margin"
        where = self._where(r.get("netns"), r.get("pid")) if r else self._where(s_ns)
        return "keepalive", conf, ev, self._cached(
            ("ka", where, ka, ka_eff, T, label),
            lambda: keepalive_fixes(where, ka, T, label, sysctl_now=ka_eff))

    def _peer(self, inc: _Incident, r: dict, s: dict | None, idle: float | None, limits: list):
        ctx = self.context
        ev = f"reset received in {r.get('state') or '?'} from {r.get('src')}:{r.get('sport')}"
        if s is not None:
            reason = s.get("reason")
            ev += f"; sent by {ctx.label(s.get('netns'))}"
            if reason:
                ev += f": {reason} ({REASON_TEXT.get(reason, 'kernel reason')})"
            conf = "high" if reason else "medium"
        else:
            ev += "; sender not on this host"
            conf = "medium"
        if idle is not None:
            ev += f"; idle {_secs(idle)}"
            if r.get("keepalive") and limits:
                T = min(x[0] for x in limits)
                ka = _num(r.get("ka_time_s"))
                if idle >= T and ka is not None:
                    ev += f" >= {_secs(T)} but keepalive {_secs(ka)} is faster"
        return "peer_reset", conf, ev, []

    def _seen(self, s: dict | None, idle: float | None) -> str:
        if s is None:
            return "nothing matched"
        parts = [f"reset sent by {self.context.label(s.get('netns'))}"
                 f"{' with no socket' if not s.get('has_sock') else ''}"]
        if s.get("reason"):
            parts.append(f"reason {s['reason']}")
        if s.get("state"):
            parts.append(f"state {s['state']}")
        parts.append("no local socket received it" if idle is None else f"idle {_secs(idle)}")
        parts.append(f"no conntrack counter rose within {self.window_s:g} s")
        return "; ".join(parts)
