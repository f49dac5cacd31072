"""Root cause of every reset: one code path for live use and for replay.

`Classifier.feed(record)` takes records in stream order (docs/EVENTS.md),
groups the resets of one flow into an incident (the no-socket reset a local
namespace sent and the reset a local socket received for the same tuple,
both written in the reset's own direction), waits `pair_window_s` after the
first reset of the incident for its other half and for fresh context, then
decides the cause. State is bounded: at most `max_pending` open incidents,
context trimmed to the window, a capped table of IPVS expiries.

Causes (analysis/vocab.py), first match wins, in the order of `Cause`
(W = window_s before the reset):
conntrack_full > firewall_reject > conntrack_invalid > peer_closed >
timeout_mismatch > keepalive > no_listener > peer_reset > unknown.

Idle timeouts beyond the node are inferred from the resets themselves
(`_inferred`): resets received from one remote endpoint (address and port)
with no sender on this host, on ESTABLISHED sockets, in the last
`INFER_WINDOW_S`. When at least INFER_MIN_RESETS of them came, every one
after an idle of at least INFER_IDLE_FLOOR_S, the remote's path holds an
idle timeout of at most T = the shortest of those idle times: such a reset
(idle >= T) is `keepalive` (medium). One reset from that remote after an
idle below the floor (an active connection reset) means the remote resets
for other reasons: no inference for it while that reset is in the window.
Live, a reset is judged on the resets before it; with `look_ahead`
(reports, `fix --from`, the lab's diagnosis) also on those up to
INFER_WINDOW_S (and the pairing window) after it, so the first resets of a
pattern get the label of the later ones: their verdicts are held back (in
order, at most HELD_MAX) until the window after them has passed. At most
INFER_PER_REMOTE resets are kept per remote, for INFER_REMOTES remotes.
"""

from __future__ import annotations

import operator
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Iterable

from .context import ContextStore
from .fixes import (Fix, Where, conntrack_full_fixes, firewall_fixes, invalid_fixes, keepalive_fixes,
                    peer_closed_fixes, rule_ref, timeout_mismatch_fixes)
from .vocab import Cause, Confidence, weight

FULL_RATIO = 0.95
IPVS_MEMORY = 65_536   # IPVS expiries remembered to match a later reset
# The two halves of a reset rewritten by NAT on this host (a backend's reset
# and the client socket receiving it through the router) are microseconds
# apart; a few ms leaves room for a loaded host without pairing strangers.
NAT_WINDOW_S = 0.005
_INF = float("inf")
# A firewall's reset and the drop of the packet it answers happen in one
# pass through netfilter; the receiving socket sees the reset a softirq
# later. Tied by the packet's flow within this, or by time alone (records
# without the flow) within NAT_WINDOW_S.
REJECT_WINDOW_S = 0.1
# States a socket reaches only after the peer's FIN: a reset received there
# answers a write to a connection the peer had already closed.
CLOSED_BY_PEER = ("CLOSE_WAIT", "LAST_ACK")
# Reasons of a reset an application asks for when it drops a connection
# (SO_LINGER 0, disconnect): how MariaDB ends a session at wait_timeout and
# proxies with `nolinger` drop idle clients. Sent by a local socket to a
# connection idle at least ABORT_IDLE_S on both sides, it is a server's idle
# timeout (peer_closed). Kernels before 6.10 give no reason: peer_reset.
ABORT_REASONS = ("TCP_STATE", "TCP_ABORT_ON_LINGER")
ABORT_IDLE_S = 0.5
# Off-node idle timeouts inferred from the resets (module docstring).
INFER_MIN_RESETS = 3
INFER_IDLE_FLOOR_S = 1.0
INFER_WINDOW_S = 3600.0
INFER_REMOTES = 4096       # remote endpoints remembered (least recently reset forgotten first)
INFER_PER_REMOTE = 256     # resets remembered per remote
HELD_MAX = 16_384          # verdicts held back for look-ahead
# Idle timeouts of common cloud boxes: named when an inferred timeout
# matches one, never assumed (each is configurable).
KNOWN_IDLE_TIMEOUTS = ((240.0, "the Azure load balancer default (4 min)"),
                       (350.0, "the AWS NLB and NAT gateway default (350 s)"),
                       (1200.0, "the GCP Cloud NAT default for established TCP (1200 s)"))
# A reset's tuple in one C call (records from the tracer have every field).
_flow_of = operator.itemgetter("src", "sport", "dst", "dport")

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
    cause: Cause
    confidence: Confidence
    evidence: str
    fixes: list[Fix]
    events: list[dict[str, Any]]   # the reset records of the incident, sent first
    sender_netns: int | None
    receiver_netns: int | None
    src: str
    sport: int
    dst: str
    dport: int
    # the resets the verdict stands for: 1, or a storm's count (reset_agg
    # records: the larger of the two halves' counts)
    count: int = 1


class _Idles:
    """The resets of one remote endpoint after idling, for the inference:
    their count, the shortest and longest idle, and those after an idle
    below the floor, kept in O(1) per reset (monotonic queues give the
    sliding minimum and maximum); at most INFER_PER_REMOTE of them."""
    __slots__ = ("seq", "all", "mins", "maxs", "shorts")

    def __init__(self) -> None:
        self.seq = 0
        self.all: deque[tuple[int, float]] = deque()      # (seq, t)
        self.mins: deque[tuple[int, float]] = deque()     # (seq, idle), idles rising
        self.maxs: deque[tuple[int, float]] = deque()     # (seq, idle), idles falling
        self.shorts: deque[int] = deque()                 # seq of those below the floor

    def add(self, t: float, idle: float) -> None:
        self.seq += 1
        n = self.seq
        self.all.append((n, t))
        while self.mins and self.mins[-1][1] >= idle:
            self.mins.pop()
        self.mins.append((n, idle))
        while self.maxs and self.maxs[-1][1] <= idle:
            self.maxs.pop()
        self.maxs.append((n, idle))
        if idle < INFER_IDLE_FLOOR_S:
            self.shorts.append(n)
        if len(self.all) > INFER_PER_REMOTE:
            self._keep_from(self.all[1][0])

    def since(self, lo: float) -> None:
        """Forget the resets before `lo`."""
        a = self.all
        while a and a[0][1] < lo:
            a.popleft()
        self._keep_from(a[0][0] if a else self.seq + 1)

    def _keep_from(self, first: int) -> None:
        while self.all and self.all[0][0] < first:
            self.all.popleft()
        for q in (self.mins, self.maxs):
            while q and q[0][0] < first:
                q.popleft()
        while self.shorts and self.shorts[0] < first:
            self.shorts.popleft()


class _Incident:
    """The resets of one flow; `nat` is set when the two halves were paired
    by time across NAT (their tuples differ)."""
    __slots__ = ("key", "t", "deadline", "sent", "recv", "done", "nat", "cand")

    def __init__(self, key: tuple, t: float, deadline: float):
        self.key = key
        self.t = t
        self.deadline = deadline
        self.sent: list[dict[str, Any]] = []
        self.recv: list[dict[str, Any]] = []
        self.done = False
        self.nat: tuple[float, int] | None = None   # (seconds apart, service port)
        # a reset from a remote after idling: (remote, idle s, the received record)
        self.cand: tuple[tuple, float, dict[str, Any]] | None = None


@dataclass(slots=True)
class _Tables:
    """The idle timeouts on a reset's path."""
    tables: list[tuple[float, str, Any]]      # (seconds, label, netns) of conntrack/IPVS
    limits: list[tuple[float, str, Any]]      # tables and the declared middleboxes
    smallest: tuple[float, str, Any] | None   # of limits
    mismatch: list[tuple[Any, float, float]]  # (netns, established, ipvs) where ipvs > established


def _seen_there(inc: _Incident, rec: dict[str, Any]) -> bool:
    """Has `rec`'s namespace already seen a reset of `inc` in `rec`'s
    direction?"""
    ns = rec.get("netns")
    for e in (inc.sent if rec.get("dir") == "sent" else inc.recv):
        if e.get("netns") == ns:
            return True
    return False


def _nat_match(s: dict[str, Any], r: dict[str, Any]) -> bool:
    """Could `s` (sent) and `r` (received) be one reset seen on both sides
    of a NAT? Other namespaces, same family, an address rewritten, the
    service side's port equal
    (the reset's source port for a service resetting its client, the
    destination port for a client resetting the service) and the same kind
    of reset (a refused SYN reaches a socket in SYN_SENT, nothing else does)."""
    if s.get("netns") == r.get("netns") or s.get("family") != r.get("family"):
        return False
    # NAT rewrites an address (DNAT the service's, SNAT the client's): two
    # resets with the same addresses and another port are two flows.
    if s.get("src") == r.get("src") and s.get("dst") == r.get("dst"):
        return False
    if s.get("sport") != r.get("sport") and s.get("dport") != r.get("dport"):
        return False
    return (s.get("syn") is True) == (r.get("state") == "SYN_SENT")


_SECS: dict[float, str] = {}


def _secs(x: float) -> str:
    # Durations repeat (timeouts, idle times in ms): rendered once each.
    # Equal keys (10 and 10.0) render alike.
    txt = _SECS.get(x)
    if txt is None:
        if len(_SECS) > 4096:
            _SECS.clear()
        txt = _SECS[x] = f"{x:.0f} s" if x >= 10 or x == int(x) else f"{x:.1f} s"
    return txt


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _mentions(text: str, token: str) -> bool:
    """`token` (a port or an address) as a whole word of a rule's text."""
    i = text.find(token)
    while i >= 0:
        before = text[i - 1] if i else " "
        after = text[i + len(token)] if i + len(token) < len(text) else " "
        if not (before.isalnum() or before in ".:") and not (after.isalnum() or after in ".:"):
            return True
        i = text.find(token, i + 1)
    return False


def _pick_rule(rules: Any, d: dict | None, r: dict) -> tuple[dict | None, str]:
    """The rule that answered the packet, among the namespace's rules that
    reset (ctx `rules`, docs/EVENTS.md), and the words that say so: rules
    whose counter stayed at 0 are out; of the rest, those naming the most of
    the packet's ports and addresses; named when one is left."""
    if not isinstance(rules, list):
        return None, "the namespace's rules were not read"
    rules = [x for x in rules if isinstance(x, dict)]
    if not rules:
        return None, "no rule answering with a TCP reset is in its ruleset now (removed since?)"
    cands = [x for x in rules if x.get("packets") != 0] or rules
    if d is not None:
        tokens = [str(d.get(k)) for k in ("dport", "dst", "sport", "src") if d.get(k) is not None]
    else:
        tokens = [str(r.get(k)) for k in ("sport", "src") if r.get(k) is not None]
    scores = [sum(_mentions(str(x.get("text") or ""), tok) for tok in tokens) for x in cands]
    if scores and max(scores) > 0:
        cands = [x for x, sc in zip(cands, scores) if sc == max(scores)]
    if len(cands) == 1:
        rule = cands[0]
        return rule, f"rule {rule_ref(rule)[0]}: `{rule.get('text')}`"
    shown = "; ".join(f"{rule_ref(x)[0]}: `{x.get('text')}`" for x in cands[:3])
    more = f" and {len(cands) - 3} more" if len(cands) > 3 else ""
    return None, f"one of {len(cands)} rules that reset there: {shown}{more}"


class Classifier:
    def __init__(self, window_s: float = 10.0, idle_timeouts: dict[str, float] | None = None,
                 pair_window_s: float = 1.0, max_pending: int = 100_000,
                 netns_names: dict[Any, str] | None = None, ram_bytes: int | None = None,
                 nat_window_s: float = NAT_WINDOW_S, look_ahead: bool = False,
                 infer_window_s: float = INFER_WINDOW_S):
        if window_s <= 0 or pair_window_s < 0 or max_pending < 1 or not 0 <= nat_window_s <= pair_window_s:
            raise ValueError("window_s > 0, pair_window_s >= 0, max_pending >= 1 and "
                             "0 <= nat_window_s <= pair_window_s are required")
        self.window_s = float(window_s)
        self.pair_window_s = float(pair_window_s)
        self.max_pending = int(max_pending)
        self.idle_timeouts = {str(k): float(v) for k, v in (idle_timeouts or {}).items()}
        self.ram_bytes = ram_bytes
        self.context = ContextStore(self.window_s, self.pair_window_s, netns_names)
        # Open incidents by tuple, and the same in arrival order (a dict used
        # as a FIFO slows down: deleted slots pile up at its front).
        self._pending: dict[tuple, _Incident] = {}
        self._queue: deque[_Incident] = deque()
        self._ipvs: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()
        self._next_id = 1
        self._fix_cache: dict[tuple, list[Fix]] = {}
        self._tables_cache: dict[tuple, _Tables] = {}
        self._wheres: dict[tuple, Where] = {}
        self._declared = [(v, f"{k} idle timeout", None) for k, v in self.idle_timeouts.items()]
        self.now: float | None = None
        self._due = _INF      # deadline of the oldest pending incident
        # Incidents by time bucket of nat_window_s, to pair across NAT.
        self._nat_w = float(nat_window_s)
        self._buckets: dict[int, list[_Incident]] = {}
        self._bucket_order: deque[int] = deque()
        # the inference of idle timeouts beyond the node: remote -> (t, idle)
        # of its resets; with look_ahead, verdicts held back in order
        self.look_ahead = bool(look_ahead)
        self.infer_window_s = float(infer_window_s)
        self._remotes: OrderedDict[tuple, _Idles] = OrderedDict()
        self._held: deque[Verdict] = deque()
        self._held_cand: dict[int, tuple] = {}     # incident id -> its candidate
        self._held_due = _INF

    @property
    def open_incidents(self) -> int:
        """Incidents waiting for their other half or fresh context."""
        return len(self._pending)

    def horizon(self) -> float:
        """No verdict still to come is older than this: the oldest open
        incident or held verdict, else the stream's time (a report over
        several recordings puts the nodes' verdicts in time order by it)."""
        t = self.now if self.now is not None else _INF
        if self._queue:
            t = min(t, self._queue[0].t)
        if self._held:
            t = min(t, self._held[0].t)
        return t

    # ---- stream interface ---------------------------------------------
    def feed(self, rec: dict[str, Any]) -> list[Verdict]:
        return self.feed_many((rec,))

    def feed_many(self, records: Iterable[dict[str, Any]]) -> list[Verdict]:
        """Same as `feed` on each record in turn (the live path is this
        loop with one record); verdicts in the order they were decided."""
        out: list[Verdict] = []
        pend = self._pending
        queue = self._queue
        add_ctx = self.context.add
        flow_of = _flow_of
        now = self.now
        for rec in records:
            t = rec.get("t")
            timed = isinstance(t, (int, float))
            if timed:
                if now is None or t > now:
                    now = self.now = t
                if t > self._due:
                    self._expire(t, out)
                if t > self._held_due:
                    self._release(t, out)
            kind = rec.get("kind")
            # a reset_agg (storm mode) is a reset of its key, `count` times:
            # its tuple has the ephemeral port at 0, so a storm's sent and
            # received counts pair as one incident, as one reset's halves do
            if kind == "reset" or kind == "reset_agg":
                if not timed:
                    continue
                try:
                    key = flow_of(rec)
                except KeyError:
                    key = (rec.get("src"), rec.get("sport"), rec.get("dst"), rec.get("dport"))
                inc = pend.get(key)
                if inc is not None and _seen_there(inc, rec):
                    # This namespace already saw a reset of this tuple in
                    # this direction: a new connection on the same tuple
                    # (a storm's client comes round to the same ephemeral
                    # port within a second), not another view of that
                    # reset. The open incident is decided now; otherwise
                    # it would hold every reset of the tuple for the whole
                    # pair window, and a storm's memory with it.
                    self._close(inc, out)
                    inc = None
                if inc is None:
                    # open and decided-early incidents together: the
                    # queue is bounded too
                    if len(queue) >= self.max_pending:
                        self._pop_head(out)
                    inc = pend[key] = _Incident(key, t, t + self.pair_window_s)
                    queue.append(inc)
                    if len(pend) == 1:
                        self._due = inc.deadline
                    if self._nat_w:
                        self._index(inc)
                (inc.sent if rec.get("dir") == "sent" else inc.recv).append(rec)
            elif kind == "ipvs_expire":
                self._add_ipvs(rec)
            else:
                add_ctx(rec)
        return out

    def tick(self, now_t: float) -> list[Verdict]:
        out: list[Verdict] = []
        self._expire(now_t, out)
        if now_t > self._held_due:
            self._release(now_t, out)
        return out

    def flush(self) -> list[Verdict]:
        out: list[Verdict] = []
        while self._pending:
            self._pop_head(out)
        self._release(_INF, out)
        return out

    # ---- pairing ----------------------------------------------------------
    def _expire(self, now: float, out: list[Verdict]) -> None:
        pend = self._pending
        while pend and self._due < now:
            self._pop_head(out)

    def _pop_head(self, out: list[Verdict]) -> None:
        self._close(self._queue[0], out)

    def _close(self, inc: _Incident, out: list[Verdict]) -> None:
        """Decides `inc` (the oldest open incident, or one whose tuple came
        round again)."""
        q = self._queue
        del self._pending[inc.key]
        if not (inc.sent and inc.recv) and self._nat_w:
            self._pair_across_nat(inc)
        self._emit(self._finalise(inc), inc.cand, out)
        # the verdict has the events; a decided incident may wait in the
        # queue and the NAT buckets for a while, without them
        inc.sent = inc.recv = ()   # type: ignore[assignment]
        inc.cand = None
        while q and q[0].done:      # decided, or halves merged into an earlier incident
            q.popleft()
        if q:
            self._due = q[0].deadline
        else:
            self._due = _INF
            self._prune_buckets()   # nothing pending: nothing left to pair with

    def _prune_buckets(self) -> None:
        """Forget time buckets no pending incident can still pair in (the
        oldest pending one looks one bucket back); done when a new bucket
        opens and when nothing is pending. Without this, a storm of resets
        that all pair directly would keep every incident alive."""
        order = self._bucket_order
        if not order:
            return
        q = self._queue
        keep = int(q[0].t / self._nat_w) - 2 if q else None
        while order and (keep is None or order[0] < keep):
            self._buckets.pop(order.popleft(), None)

    def _index(self, inc: _Incident) -> None:
        b = int(inc.t / self._nat_w)
        slot = self._buckets.get(b)
        if slot is None:
            self._prune_buckets()
            slot = self._buckets[b] = []
            self._bucket_order.append(b)
        slot.append(inc)

    def _pair_across_nat(self, inc: _Incident) -> None:
        """A reset sent in one namespace and one received in another, a few
        ms apart, with the same service port but other addresses: the
        halves of one reset that NAT rewrote on the way (a backend behind a
        masquerading router answering for a VIP). Paired only when exactly
        one candidate fits, so a storm cannot mix flows; among several, the
        one whose other port is equal too (masquerade keeps the client's
        port where it can: two pooled connections reset at once)."""
        w = self._nat_w
        b = int(inc.t / w)
        buckets = self._buckets
        mine_sent = bool(inc.sent)
        e = inc.sent[0] if mine_sent else inc.recv[0]
        found: list[_Incident] = []
        same_ports: list[_Incident] = []
        for k in (b - 1, b, b + 1):
            for o in buckets.get(k, ()):
                if o is inc or o.done or bool(o.sent) == mine_sent or (o.sent and o.recv) \
                        or abs(o.t - inc.t) > w:
                    continue
                s, r = (e, o.recv[0]) if mine_sent else (o.sent[0], e)
                if _nat_match(s, r):
                    found.append(o)
                    if s.get("sport") == r.get("sport") and s.get("dport") == r.get("dport"):
                        same_ports.append(o)
        pick = found if len(found) == 1 else same_ports
        if len(pick) != 1:
            return              # none, or ambiguous: leave them alone
        other = pick[0]
        del self._pending[other.key]
        other.done = True
        inc.sent += other.sent
        inc.recv += other.recv
        s, r = inc.sent[0], inc.recv[0]
        port = s.get("sport") if s.get("sport") == r.get("sport") else s.get("dport")
        inc.nat = (abs(other.t - inc.t), port)
        inc.t = min(inc.t, other.t)

    def _add_ipvs(self, rec: dict[str, Any]) -> None:
        key = (rec.get("vaddr"), rec.get("vport"), rec.get("client"), rec.get("cport"))
        self._ipvs[key] = (rec.get("t"), rec.get("netns"))
        self._ipvs.move_to_end(key)
        if len(self._ipvs) > IPVS_MEMORY:
            self._ipvs.popitem(last=False)

    # ---- idle timeouts beyond the node, inferred --------------------------
    def _emit(self, v: Verdict, cand: tuple | None, out: list[Verdict]) -> None:
        """A decided verdict goes out; a reset from a remote after idling is
        first remembered for its remote, and judged with the others (now,
        or with look_ahead once the window after it has passed)."""
        if cand is not None:
            self._note_remote(cand[0], v.t, cand[1])
        if not self.look_ahead:
            if cand is not None:
                self._infer_into(v, cand, v.t)
            out.append(v)
            return
        if cand is None and not self._held:
            out.append(v)
            return
        if cand is not None:
            self._held_cand[v.incident] = cand
        if not self._held:
            self._held_due = v.t + self.infer_window_s + self.pair_window_s
        self._held.append(v)
        if len(self._held) > HELD_MAX:
            self._release(v.t, out, over=True)

    def _release(self, now: float, out: list[Verdict], over: bool = False) -> None:
        """Held verdicts, in order, up to the first candidate whose window
        after it is still open (all with `now` = inf; the oldest one first
        when more than HELD_MAX are held)."""
        held, cands = self._held, self._held_cand
        while held:
            v = held[0]
            cand = cands.get(v.incident)
            if cand is not None:
                if v.t + self.infer_window_s + self.pair_window_s >= now and not over:
                    self._held_due = v.t + self.infer_window_s + self.pair_window_s
                    return
                del cands[v.incident]
                self._infer_into(v, cand, v.t)
                over = False
            out.append(held.popleft())
        self._held_due = _INF

    def _note_remote(self, remote: tuple, t: float, idle: float) -> None:
        idles = self._remotes.get(remote)
        if idles is None:
            if len(self._remotes) >= INFER_REMOTES:
                self._remotes.popitem(last=False)
            idles = self._remotes[remote] = _Idles()
        else:
            self._remotes.move_to_end(remote)
        idles.add(t, idle)

    def _inferred(self, remote: tuple, t: float, idle: float) -> tuple[float, float, int] | None:
        """(T, longest idle, resets) when the resets from `remote` from t -
        window on (to t live; with look_ahead, to the release of the
        verdict, a window after t) show an idle timeout of at most T on its
        path (module docstring). Asked in time order: what is older than
        the window is forgotten."""
        idles = self._remotes.get(remote)
        if idle < INFER_IDLE_FLOOR_S or idles is None:
            return None
        idles.since(t - self.infer_window_s)
        n = len(idles.all)
        if n < INFER_MIN_RESETS or idles.shorts:
            return None
        return idles.mins[0][1], idles.maxs[0][1], n

    def _infer_into(self, v: Verdict, cand: tuple, t: float) -> None:
        remote, idle, r = cand
        hit = self._inferred(remote, t, idle)
        if hit is None:
            return
        T, longest, n = hit
        where_to = f"{remote[0]}:{remote[1]}"
        ev = (f"an idle timeout of at most {_secs(T)} on the path to {where_to} ({n} resets, "
              f"idle {_secs(T)[:-2]}..{_secs(longest)}); idle {_secs(idle)}; sender not on this host")
        known = [name for sec, name in KNOWN_IDLE_TIMEOUTS if sec <= T <= sec * 1.25]
        if known:
            ev += f"; matches {known[-1]}, configurable: check the box's setting"
        ka_on = r.get("keepalive")
        ka_eff = _num(r.get("ka_time_s"))
        ka = ka_eff if ka_on else None
        if ka_on is None:
            ev += "; keepalive unknown"
        elif not ka_on:
            ev += "; SO_KEEPALIVE off"
        elif ka is not None and ka < T:
            ev += (f"; keepalive {_secs(ka)} is below it, so the box counts data only "
                   "(an application proxy): the pool's idle time must be below it")
        else:
            ev += f"; keepalive {_secs(ka) if ka is not None else '?'} not below {_secs(T)}"
        where = self._where(r.get("netns"), r.get("pid"))
        label = f"inferred idle timeout to {where_to}, at most"
        v.cause, v.confidence, v.evidence = Cause.KEEPALIVE, Confidence.MEDIUM, ev
        v.fixes = self._cached(("inf", where.netns, where.name, where.pid, ka, ka_eff, T, where_to),
                               lambda: keepalive_fixes(where, ka, T, label, sysctl_now=ka_eff, proxy=True))

    # ---- the decision -----------------------------------------------------
    def _finalise(self, inc: _Incident) -> Verdict:
        inc.done = True
        cause, conf, evidence, fixes = self._decide(inc)
        sent, recv = inc.sent, inc.recv
        if inc.nat is not None:
            dt, port = inc.nat
            evidence += f"; paired by time across NAT ({dt * 1000:.1f} ms apart, service port {port})"
        # Across NAT the flow is the one the receiving socket knows.
        first = recv[0] if inc.nat is not None or not sent else sent[0]
        v = Verdict(self._next_id, inc.t, cause, conf, evidence, fixes, sent + recv,
                    sent[0].get("netns") if sent else None, recv[0].get("netns") if recv else None,
                    first.get("src"), first.get("sport"), first.get("dst"), first.get("dport"),
                    max(sum(map(weight, sent)), sum(map(weight, recv))))
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
        # One Where per (netns, pid, name): fix caches key on them by value.
        name = self.context.names.get(ns) if ns is not None else None
        key = (ns, pid)
        w = self._wheres.get(key)
        if w is None or w.name != name:
            if len(self._wheres) > 4096:
                self._wheres.clear()
            w = self._wheres[key] = Where(ns if isinstance(ns, int) else None, name,
                                          pid if isinstance(pid, int) else None)
        return w

    def _decide(self, inc: _Incident) -> tuple[Cause, Confidence, str, list[Fix]]:
        ctx = self.context
        t, upto = inc.t, inc.deadline
        # The sender that matters is the no-socket one: its namespace's tables
        # are the ones that forgot or refused the flow.
        s = None
        for e in inc.sent:
            if not e.get("has_sock"):
                s = e
                break
        else:
            if inc.sent:
                s = inc.sent[0]
        r = inc.recv[0] if inc.recv else None
        s_ns = s.get("netns") if s else None
        r_ns = r.get("netns") if r else None
        syn = bool((s and s.get("syn") is True) or (r and r.get("state") == "SYN_SENT"))
        idle = _num(r.get("idle_ms")) if r else None
        idle = idle / 1000.0 if idle is not None else None

        # A reset no TCP stack here sent, for a flow whose packet netfilter
        # dropped at that moment: a rule answered it (`reject with tcp
        # reset`). Unless that namespace's table was itself in trouble.
        if s is None and r is not None:
            hit = self._rejected(r, t)
            if hit is not None:
                full = self._full(hit[0], t, upto)
                if full is not None:
                    return full
                return self._firewall(r, *hit)

        # conntrack_full only when the table on the reset's path was in
        # trouble: the no-socket sender's namespace, else the receiving
        # socket's own one when conntrack was seen there. Only with neither
        # (a remote sender, a namespace without conntrack) does trouble
        # anywhere on the host count, and the evidence says so.
        if s is not None:
            path = s_ns
        elif r is not None and ctx.has_ct(r_ns):
            path = r_ns
        else:
            path = None
        res = self._full(path, t, upto)
        if res:
            return res

        # Timeouts of the tables on the path: the sender's namespace when
        # known, else every namespace here that NATs (a guess: medium at best).
        # A sender paired across NAT (a backend resetting a tuple the node
        # translated) is behind the translating tables: they count too.
        guessed = s is None
        tb = self._tables(s_ns if s is not None else None, guessed, inc.nat is not None)
        expired = self._ipvs_match(inc) if self._ipvs else None

        # The peer closed first: the reset answers a write to a connection
        # its FIN had ended, unless a table on the path forgot the flow
        # before that FIN (then that table decides, below).
        if r is not None and r.get("state") in CLOSED_BY_PEER:
            res = self._peer_closed(r, s, s_ns, idle)
            if res:
                return res
        # ... or it dropped the idle connection with a reset of its own.
        if s is not None and r is not None and s.get("reason") in ABORT_REASONS and idle is not None:
            res = self._idle_abort(r, s, idle)
            if res:
                return res

        if s is not None and not syn and not s.get("has_sock"):
            rise = ctx.rise(s_ns, "invalid", t, upto)
            if rise:
                smallest = tb.smallest
                idle_past = expired is not None or (
                    idle is not None and smallest is not None and idle >= smallest[0])
                if not idle_past:
                    ev = (f"no-socket reset sent by {ctx.label(s_ns)}; conntrack invalid "
                          f"+{rise.delta} within {self.window_s:g} s")
                    if idle is None:
                        ev += "; idle time unknown (no local socket received it)"
                        conf = Confidence.MEDIUM
                    else:
                        ev += f"; idle {_secs(idle)}"
                        if smallest is not None:
                            ev += f" < {smallest[1]} {_secs(smallest[0])}"
                        conf = Confidence.HIGH
                    bl = _num(((ctx.ctx(s_ns) or {}).get("sysctl") or {}).get("nf_conntrack_tcp_be_liberal"))
                    w = self._where(s_ns)
                    return Cause.CONNTRACK_INVALID, conf, ev, self._cached(
                        ("inv", s_ns, w.name, bl), lambda: invalid_fixes(w, None if bl is None else int(bl)))

        if not syn and (idle is not None or expired is not None):
            res = self._idle(inc, r, s_ns, idle, tb, expired, guessed)
            if res:
                return res

        if syn:
            who = f"{s_ns and ctx.label(s_ns) or 'the peer'}"
            return (Cause.NO_LISTENER, Confidence.HIGH,
                    f"reset answers a SYN: nothing listens on {(s or r).get('src')}:{(s or r).get('sport')} "
                    f"(refused by {who})", [])

        if r is not None:
            if s is None and idle is not None and r.get("state") == "ESTABLISHED":
                # from a remote after idling: may show an idle timeout beyond the node
                inc.cand = ((r.get("src"), r.get("sport")), idle, r)
            return self._peer(inc, r, s, idle, tb.limits)

        return Cause.UNKNOWN, Confidence.LOW, self._seen(s, idle), []

    def _tables(self, s_ns: Any, guessed: bool, via_nat: bool = False) -> _Tables:
        """Every conntrack/IPVS idle timeout on the path, derived once per
        path and context version."""
        ctx = self.context
        key = (s_ns, guessed, via_nat, ctx.version)
        hit = self._tables_cache.get(key)
        if hit is not None:
            return hit
        if len(self._tables_cache) > 1024:
            self._tables_cache.clear()
        nat = [ns for ns in ctx.namespaces() if (ctx.ctx(ns) or {}).get("nat")]
        path = nat if guessed else [s_ns] + ([ns for ns in nat if ns != s_ns] if via_nat else [])
        tables: list[tuple[float, str, Any]] = []
        mismatch: list[tuple[Any, float, float]] = []
        for ns in path:
            c = ctx.ctx(ns) or {}
            est = _num((c.get("sysctl") or {}).get("nf_conntrack_tcp_timeout_established"))
            ipvs = _num((c.get("ipvs") or {}).get("tcp"))
            if est is not None:
                tables.append((est, "conntrack established timeout", ns))
            if ipvs is not None:
                tables.append((ipvs, "ipvs tcp timeout", ns))
            if est is not None and ipvs is not None and ipvs > est:
                mismatch.append((ns, est, ipvs))
        limits = tables + self._declared
        smallest = min(limits, key=lambda x: x[0]) if limits else None
        hit = self._tables_cache[key] = _Tables(tables, limits, smallest, mismatch)
        return hit

    def _full(self, path_ns: Any, t: float, upto: float) -> tuple[Cause, Confidence, str, list[Fix]] | None:
        ctx = self.context
        if ctx.quiet(path_ns, t):
            return None
        nss = [path_ns] if path_ns is not None else ctx.namespaces()
        facts: list[str] = []
        strength = 0   # 3 high, 2 medium
        full_seen = False
        cur_max = cur_buckets = None
        peak = 0
        lines = ctx.full_lines(path_ns, t, upto, unnamed=False)
        if lines:
            strength, full_seen = 3, True
            facts.append(f"\"table full\" logged {lines}x"
                         + (f" in {ctx.label(path_ns)}" if path_ns is not None else "")
                         + f" within {self.window_s:g} s")
        # A line naming no namespace (older kernels) may be from anywhere:
        # it counts, as a guess, unless the path's own counters were read
        # after the reset and can tell for themselves.
        unnamed = ctx.full_lines(None, t, upto) - ctx.full_lines(None, t, upto, unnamed=False)
        if unnamed and (path_ns is None or not ctx.covered(path_ns, t, upto)):
            strength = max(strength, 2)
            full_seen = True
            facts.append(f"\"table full\" logged {unnamed}x (namespace not named) within {self.window_s:g} s")
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
        if not strength:
            # Netfilter drops alone are no table trouble: any DROP or
            # REJECT rule makes them. They only add to the table's own signs.
            return None
        drops = ctx.drop_records(path_ns, t, upto)
        if drops:
            facts.append(f"{drops} netfilter drops"
                         + (f" in {ctx.label(path_ns)}" if path_ns is not None else ""))
        conf = {3: Confidence.HIGH, 2: Confidence.MEDIUM}[strength]
        if path_ns is None:
            facts.append("path unknown: any namespace on this host counted")
        fixes = self._cached(("full", cur_max, cur_buckets, peak, full_seen, self.ram_bytes),
                             lambda: conntrack_full_fixes(cur_max, cur_buckets, peak, full_seen, self.ram_bytes))
        return Cause.CONNTRACK_FULL, conf, "; ".join(facts), fixes

    def _ipvs_match(self, inc: _Incident) -> tuple[float, Any] | None:
        if not self._ipvs:
            return None
        e = inc.sent[0] if inc.sent else inc.recv[0]
        hit = self._ipvs.get((e.get("src"), e.get("sport"), e.get("dst"), e.get("dport")))
        if hit and isinstance(hit[0], (int, float)) and hit[0] <= inc.t:
            return hit
        return None

    def _idle(self, inc: _Incident, r: dict | None, s_ns: Any, idle: float | None,
              tb: _Tables, expired: tuple | None, guessed: bool):
        ctx = self.context
        exp_txt = ""
        if expired is not None:
            exp_txt = f"; IPVS expired this flow {_secs(inc.t - expired[0])} before the reset"
        # timeout mismatch: conntrack forgot (idle >= its timeout) while IPVS
        # in the same namespace still held the flow (idle < IPVS timeout).
        ka_on = r.get("keepalive") if r else None
        # ka_time_s is the effective value even with SO_KEEPALIVE off: it is
        # what the namespace sysctl (or the socket) holds now.
        ka_eff = _num(r.get("ka_time_s")) if r else None
        ka = ka_eff if ka_on else None
        if idle is not None:
            for ns, est, ipvs in tb.mismatch:
                if est <= idle < ipvs:
                    ev = (f"idle {_secs(idle)} >= conntrack established timeout {_secs(est)} in "
                          f"{ctx.label(ns)} while its ipvs tcp timeout {_secs(ipvs)} still held the flow"
                          + exp_txt)
                    w, rw = self._where(ns), self._where(r.get("netns"), r.get("pid")) if r else None
                    conf = Confidence.MEDIUM if guessed else Confidence.HIGH
                    return Cause.TIMEOUT_MISMATCH, conf, ev, self._cached(
                        ("tm", ns, w.name, rw and (rw.netns, rw.name, rw.pid), est, ipvs, ka, ka_eff),
                        lambda: timeout_mismatch_fixes(w, est, ipvs, ka, rw, ka_eff))
        if tb.smallest is None:
            return None
        T, label, ns = tb.smallest
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
            conf = Confidence.LOW if guessed else Confidence.MEDIUM   # the socket's keepalive is not known
        elif ns is not None and not guessed:
            conf = Confidence.HIGH
        else:
            conf = Confidence.MEDIUM
        ev = f"{idle_txt}; {ka_txt}{exp_txt}"
        if ka is not None and any(ka == sec for sec, _, _ in tb.tables if sec >= T):
            ev += "; keepalive equal to a timeout leaves no margin"
        where = self._where(r.get("netns"), r.get("pid")) if r else self._where(s_ns)
        return Cause.KEEPALIVE, conf, ev, self._cached(
            ("ka", where.netns, where.name, where.pid, ka, ka_eff, T, label),
            lambda: keepalive_fixes(where, ka, T, label, sysctl_now=ka_eff))

    def _rejected(self, r: dict, t: float) -> tuple[Any, dict | None, str] | None:
        """(netns, drop record, how it is tied) of the netfilter drop of
        the packet this reset answers: a drop whose packet had the reset
        receiver's end (addr, port) on either side, the other end the
        reset's sender or, through NAT, its port or a namespace that NATs
        ("flow"); else one drop at the sender's end within the NAT window
        (the receiver's end rewritten by SNAT before the rule: "nat"); else,
        for drops recorded without their flow, drops in one namespace
        within the NAT window ("time")."""
        ctx = self.context
        me, peer = (r.get("dst"), r.get("dport")), (r.get("src"), r.get("sport"))
        best = None
        # (no family compared: addresses are compared as text, and a
        # dual-stack socket's reset is AF_INET6 with the IPv4 addresses of
        # the IPv4 packet dropped)
        for ts, ns, d in ctx.drops_at(me[0], me[1], t, REJECT_WINDOW_S):
            other = (d.get("dst"), d.get("dport")) if (d.get("src"), d.get("sport")) == me \
                else (d.get("src"), d.get("sport"))
            if other == peer or other[1] == peer[1] or (ctx.ctx(ns) or {}).get("nat"):
                if best is None or abs(ts - t) < best[0]:
                    best = (abs(ts - t), ns, d)
        if best is not None:
            return best[1], best[2], "flow"
        w = self._nat_w or NAT_WINDOW_S
        near = ctx.drops_at(peer[0], peer[1], t, w)
        if len(near) == 1 and near[0][1] != r.get("netns"):
            return near[0][1], near[0][2], "nat"
        bare = {ns for _, ns in ctx.bare_drops_at(t, w)}
        if len(bare) == 1:
            return bare.pop(), None, "time"
        return None

    def _firewall(self, r: dict, ns: Any, d: dict | None, how: str):
        ctx = self.context
        syn = r.get("state") == "SYN_SENT" or bool(d and isinstance(d.get("tcp_flags"), int)
                                                   and d["tcp_flags"] & 0x02)
        ev = (f"reset received in {r.get('state') or '?'} from {r.get('src')}:{r.get('sport')} "
              f"with no TCP sender on this host; netfilter dropped the flow's "
              f"{'SYN' if syn else 'packet'} in {ctx.label(ns)} at that moment")
        if d is not None:
            flow = f"{d.get('src')}:{d.get('sport')} -> {d.get('dst')}:{d.get('dport')}"
            ev += f" ({flow}{', paired by time across NAT' if how == 'nat' else ''})"
        else:
            flow = f"{r.get('dst')}:{r.get('dport')} -> {r.get('src')}:{r.get('sport')}"
            ev += " (the drop's flow was not recorded: tied by time)"
        rule, said = _pick_rule((ctx.ctx(ns) or {}).get("rules"), d, r)
        ev += "; " + said
        w = self._where(ns)
        ref = rule_ref(rule)[0] if rule is not None else None
        return Cause.FIREWALL_REJECT, Confidence.HIGH if how == "flow" else Confidence.MEDIUM, ev, self._cached(
            ("fw", w.netns, w.name, ref, flow if rule is None else None),
            lambda: firewall_fixes(w, rule, flow))

    def _peer_closed(self, r: dict, s: dict | None, s_ns: Any, idle: float | None):
        ctx = self.context
        ev = (f"reset received in {r.get('state')} from {r.get('src')}:{r.get('sport')}: "
              "the peer had closed the connection (its FIN came first)")
        if idle is not None:
            ev += f"; the application wrote {_secs(idle)} after that FIN"
        if s is not None and not s.get("has_sock"):
            # A table on the path no longer had the flow. It forgot it
            # after the FIN only if the time since the FIN reached its
            # timeout for a closing flow; sooner, it forgot it before the
            # FIN came and is the first cause (the checks that follow).
            cw = _num(((ctx.ctx(s_ns) or {}).get("sysctl") or {}).get("nf_conntrack_tcp_timeout_close_wait"))
            if cw is not None and idle is not None and idle < cw:
                return None
            ev += f"; then {ctx.label(s_ns)} forgot the closed flow"
            ev += (f" (idle >= its conntrack close_wait timeout {_secs(cw)})" if cw is not None
                   else " (its close_wait timeout unknown)")
            ev += " and reset the write"
            conf = Confidence.HIGH if cw is not None and idle is not None else Confidence.MEDIUM
        elif s is not None:
            reason = s.get("reason")
            ev += f"; sent by {ctx.label(s.get('netns'))} from a {s.get('state') or '?'} socket"
            if reason:
                ev += f": {reason} ({REASON_TEXT.get(reason, 'kernel reason')})"
            conf = Confidence.HIGH
        else:
            ev += "; sender not on this host"
            conf = Confidence.MEDIUM
        where = self._where(r.get("netns"), r.get("pid"))
        after = round(idle, 1) if idle is not None else None
        return Cause.PEER_CLOSED, conf, ev, self._cached(
            ("pc", where.netns, where.name, after), lambda: peer_closed_fixes(where, after_fin_s=after))

    def _idle_abort(self, r: dict, s: dict, idle: float):
        s_idle = _num(s.get("idle_ms"))
        if s_idle is None or min(idle, s_idle / 1000.0) < ABORT_IDLE_S:
            return None
        ctx = self.context
        reason = s.get("reason")
        ev = (f"reset received in {r.get('state') or '?'} from {r.get('src')}:{r.get('sport')}: the peer's "
              f"application dropped the connection idle {_secs(idle)} (at the peer {_secs(s_idle / 1000.0)}) "
              "with a reset, as a server's idle timeout does (MariaDB's wait_timeout, a proxy's idle "
              f"limit with SO_LINGER 0); sent by {ctx.label(s.get('netns'))} from a "
              f"{s.get('state') or '?'} socket: {reason} ({REASON_TEXT.get(reason, 'kernel reason')})")
        where = self._where(r.get("netns"), r.get("pid"))
        x = round(idle, 1)
        return Cause.PEER_CLOSED, Confidence.MEDIUM, ev, self._cached(
            ("pca", where.netns, where.name, x), lambda: peer_closed_fixes(where, idle_s=x))

    def _peer(self, inc: _Incident, r: dict, s: dict | None, idle: float | None, limits: list):
        ctx = self.context
        ev = f"reset received in {r.get('state') or '?'} from {r.get('src')}:{r.get('sport')}"
        if s is not None:
            reason = s.get("reason")
            ev += f"; sent by {ctx.label(s.get('netns'))}"
            if reason:
                ev += f": {reason} ({REASON_TEXT.get(reason, 'kernel reason')})"
            conf = Confidence.HIGH if reason else Confidence.MEDIUM
        else:
            ev += "; sender not on this host"
            conf = Confidence.MEDIUM
        if idle is not None:
            ev += f"; idle {_secs(idle)}"
            if r.get("keepalive") and limits:
                T = min(x[0] for x in limits)
                ka = _num(r.get("ka_time_s"))
                if idle >= T and ka is not None:
                    ev += f" >= {_secs(T)} but keepalive {_secs(ka)} is faster"
        return Cause.PEER_RESET, conf, ev, []

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
