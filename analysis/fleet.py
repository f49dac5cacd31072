"""A postmortem over several nodes' recordings: both ends of a reset joined.

A client on node A gets a reset that node B made: A's recording sees a
reset received from a remote address, B's the sender and its reason. A
report over both reads every node's recordings as one stream (its rotated
files in order), merges the nodes' streams by time (a k-way merge: memory
stays bounded whatever the inputs' size), classifies each node's records
with a `Classifier` of its own (namespace inodes, tables and rules are per
node), and joins the two ends:

a reset received on node A is joined with a reset sent on another node B
within the clock tolerance when their flows are the same, or, through NAT
B recorded (a namespace of B with NAT rules), when both ports are equal and
an address was rewritten; or, with no such sender, with an IPVS expiry on
B of the flow it answers, or B's netfilter drop of the packet it answers
within the tolerance (a firewall's reject: drops carry their flow). A join needs exactly one candidate: two senders
that fit are left alone (counted, warned), so a busy fleet cannot mix
flows. The received reset is then classified by B's classifier, with B's
context, beside B's half (as if both ends had been on B): the received row
takes the sender-side cause, evidence and fixes, shares the incident of
the sent row, and both name the other node in `peer_node`.

Verdicts leave in time order: each is held until no node's classifier can
still decide an older one (`Classifier.horizon`: a report's look-ahead may
hold verdicts for up to its inference window); at most OUT_MAX wait, past
that the oldest leave at once. A node whose recordings end early is decided
then, so the others' verdicts do not wait for the end.

The pure decision (which sender, if any, a received reset joins) is
`match`, tested table-driven; `Matcher` keeps the recent resets for it.
"""

from __future__ import annotations

import heapq
import os
import re
import stat
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Any, Iterable, Iterator

from rsttrace.schema.recording import RecordingError, iter_batches, read_header

from .classify import Classifier, Verdict
from .config import audit
from .fixes import Fix, merge_fixes
from .pump import Pump
from .summary import Summary, Tally, summarize

#: Default of `report --clock-tolerance`: how far apart two nodes' clocks
#: may be for their resets to be joined. NTP keeps nodes within
#: milliseconds; a joined flow must also match by its ports, so a generous
#: bound costs little. A larger one widens the fleet's pairing window too.
CLOCK_TOLERANCE_S = 0.25
# Resets matching by their whole flow further apart than the tolerance, up
# to this, only measure how far two nodes' clocks seem apart (a warning).
PROBE_S = 60.0
RECENT_MAX = 200_000      # recent resets kept for joining (the oldest forgotten first)
EXPIRY_MEMORY = 65_536    # IPVS expiries kept per node
OUT_MAX = 100_000         # verdicts waiting to go out in time order
FEED_EVERY = 512          # records merged between two feeds of the classifiers and outputs
# A received reset is decided at most this long after the tolerance has
# passed it (sooner with FEED_EVERY records): within the fleet's pairing
# window's margin, so the sender's incident is still open to its half.
DECIDE_SLACK_S = 0.1
_NAT_GAP = re.compile(r"; paired by time across NAT \([0-9.]+ ms apart, (service port [0-9]+)\)")


def node_of(header: dict[str, Any], fallback: str) -> str:
    node = header.get("node") or header.get("host")
    return node if isinstance(node, str) and node else fallback


# ---- inputs ----------------------------------------------------------------

def expand(paths: Iterable[str]) -> list[str]:
    """The recordings named: files as given, and in a directory its
    regular files named `*.jsonl` (the agent's rotated recordings), in name
    order. A symbolic link in a directory is not followed."""
    out: list[str] = []
    for p in paths:
        try:
            st = os.lstat(p)
        except OSError:
            out.append(p)           # the reader says what is wrong
            continue
        if not stat.S_ISDIR(st.st_mode):
            out.append(p)
            continue
        found = []
        for name in sorted(os.listdir(p)):
            if not name.endswith(".jsonl"):
                continue
            full = os.path.join(p, name)
            try:
                if stat.S_ISREG(os.lstat(full).st_mode):
                    found.append(full)
            except OSError:
                continue
        if not found:
            raise RecordingError(f"{p}: a directory with no recordings (*.jsonl) in it; give the agent's "
                                 "--record-dir or recordings made by `rsttrace record`")
        out += found
    return out


@dataclass
class _File:
    path: str
    header: dict[str, Any]
    node: str
    reader: Any = None


@dataclass
class _Node:
    name: str
    index: int
    files: list[_File]
    clf: Classifier
    skipped: dict[str, int] = field(default_factory=dict)    # file -> events skipped (overlap)
    expiries: OrderedDict = field(default_factory=OrderedDict)  # the flow it answers -> ipvs_expire record
    buf: list = field(default_factory=list)
    drops: deque = field(default_factory=deque)    # recent netfilter drops that carry their flow
    flushed: bool = False       # every incident decided (its stream ended)

    def records(self) -> Iterator[dict[str, Any]]:
        """The node's files as one stream, oldest first; records of a file
        at or before the last event of the files before it are skipped
        (the same recording twice, or rotations that overlap)."""
        last = None
        for f in self.files:
            reader, batches = iter_batches(f.path)
            f.reader = reader
            for batch in batches:
                for rec in batch:
                    t = rec["t"]
                    if last is not None and t <= last:
                        if rec.get("kind") != "ctx":
                            self.skipped[f.path] = self.skipped.get(f.path, 0) + 1
                        continue
                    if rec.get("kind") != "ctx":
                        last = t
                    yield rec


# ---- the join --------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A sender-side record on another node: a sent reset or an IPVS expiry."""
    node: str
    t: float
    rec: dict[str, Any]
    nat: bool = False          # its node recorded a namespace with NAT rules


def flow(r: dict[str, Any]) -> tuple:
    return (r.get("src"), r.get("sport"), r.get("dst"), r.get("dport"))


def _fits(s: dict[str, Any], r: dict[str, Any], nat: bool) -> str | None:
    """How a sent reset `s` can be the received `r`: "flow" (the same
    flow), "nat" (both ports equal, an address rewritten, by a node with
    NAT rules), or None. A refused SYN reaches a socket in SYN_SENT,
    nothing else does."""
    if s.get("family") != r.get("family") or s.get("sport") != r.get("sport") \
            or s.get("dport") != r.get("dport"):
        return None
    if (s.get("syn") is True) != (r.get("state") == "SYN_SENT") and s.get("syn") is not None:
        return None
    if s.get("src") == r.get("src") and s.get("dst") == r.get("dst"):
        return "flow"
    return "nat" if nat else None


def dropped(d: dict[str, Any], r: dict[str, Any], nat: bool) -> bool:
    """Could the netfilter drop `d` be of the packet the reset `r` answers?
    Its packet has r's receiver end on either side and, at the other, the
    reset's sender (or, on a node with NAT rules, its port): as the sender
    node's classifier ties a firewall's reset to its drop."""
    me, peer = (r.get("dst"), r.get("dport")), (r.get("src"), r.get("sport"))
    if d.get("family") not in (None, r.get("family")):
        return False
    if (d.get("src"), d.get("sport")) == me:
        other = (d.get("dst"), d.get("dport"))
    elif (d.get("dst"), d.get("dport")) == me:
        other = (d.get("src"), d.get("sport"))
    else:
        return False
    return other == peer or (nat and other[1] == peer[1])


def match(r: dict[str, Any], node: str, sent: Iterable[Candidate], expiries: Iterable[Candidate],
          tolerance: float) -> tuple[Candidate | None, str]:
    """The one sender a reset received on `node` at r["t"] joins, and how
    ("flow", "nat", "ipvs", "drop"), or (None, why not: "none", "ambiguous").
    Sent resets on other nodes within `tolerance` that fit it by flow come
    first, then those that fit through NAT; an IPVS expiry of its flow
    (recorded before it, give or take the tolerance) or a netfilter drop of
    its packet (`expiries` holds both) only where no sender fits, and only
    on one node (its drop nearest in time). More than one candidate of the
    first kind that has any: none."""
    t = r["t"]
    by_flow, by_nat = [], []
    for c in sent:
        if c.node == node or abs(c.t - t) > tolerance:
            continue
        how = _fits(c.rec, r, c.nat)
        if how == "flow":
            by_flow.append(c)
        elif how == "nat":
            by_nat.append(c)
    for found, how in ((by_flow, "flow"), (by_nat, "nat")):
        if len(found) == 1:
            return found[0], how
        if found:
            return None, "ambiguous"
    exp = [c for c in expiries if c.node != node and c.t <= t + tolerance]
    if len({c.node for c in exp}) == 1 and (len(exp) == 1 or all(c.rec.get("kind") == "ct_drop" for c in exp)):
        c = min(exp, key=lambda c: abs(c.t - t))
        return c, "drop" if c.rec.get("kind") == "ct_drop" else "ipvs"
    return (None, "ambiguous") if exp else (None, "none")


class Matcher:
    """The recent resets of every node, to join each received reset once
    the merged stream has passed it by the tolerance (a sender on a node
    whose clock is behind comes later in the stream)."""

    def __init__(self, tolerance: float, nat_of: Any):
        self.tol = tolerance
        self.nat_of = nat_of            # node -> whether it recorded a NAT namespace
        self.by_ports: dict[tuple, deque] = {}      # (sport, dport) -> [(t, node, dir, rec)]
        self.order: deque = deque()                  # (t, key) in arrival order, for forgetting
        self.waiting: deque = deque()                # (t, node, rec) received, to decide
        self.offsets: dict[tuple, list[float]] = {}  # (sender, receiver) -> dt beyond the tolerance
        self.ambiguous: dict[tuple, int] = {}        # (receiver node, "flow"/"nat"/"ipvs") -> resets

    def see(self, node: str, rec: dict[str, Any]) -> None:
        key = (rec.get("sport"), rec.get("dport"))
        slot = self.by_ports.get(key)
        if slot is None:
            slot = self.by_ports[key] = deque()
        t = rec["t"]
        d = rec.get("dir")
        if d == "recv":
            self.waiting.append((t, node, rec))
        else:
            # received resets of its flow elsewhere, too far apart to join:
            # how far the two nodes' clocks seem apart
            f = flow(rec)
            for ts, n, dd, e in slot:
                if dd == "recv" and n != node and abs(t - ts) > self.tol and flow(e) == f:
                    self.offsets.setdefault((node, n), []).append(t - ts)
        slot.append((t, node, d, rec))
        self.order.append((t, key))
        self._forget(t)

    def _forget(self, now: float) -> None:
        order = self.order
        while order and (order[0][0] < now - PROBE_S or len(order) > RECENT_MAX):
            _, key = order.popleft()
            slot = self.by_ports.get(key)
            if slot:
                slot.popleft()
                if not slot:
                    del self.by_ports[key]

    def next_due(self) -> float:
        """When the oldest received reset waiting can be decided."""
        return self.waiting[0][0] + self.tol if self.waiting else float("inf")

    def due(self, now: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """The received resets the stream has passed by the tolerance."""
        w = self.waiting
        while w and w[0][0] + self.tol < now:
            _, node, rec = w.popleft()
            yield node, rec

    def candidates(self, node: str, r: dict[str, Any]) -> tuple[list[Candidate], bool]:
        """Sent resets near `r` on other nodes, and whether its flow was
        sent or received elsewhere on its own node (then it is no orphan
        of this node: not joined) or the sender's flow was received on the
        sender's node (paired there)."""
        out = []
        t, f = r["t"], flow(r)
        local = False
        slot = self.by_ports.get((r.get("sport"), r.get("dport"))) or ()
        near_recv = {(n, flow(e)) for ts, n, d, e in slot if d == "recv" and abs(ts - t) <= self.tol}
        for ts, n, d, e in slot:
            if d != "sent":
                continue
            if n == node:
                if flow(e) == f and abs(ts - t) <= self.tol:
                    local = True
                continue
            if abs(ts - t) <= self.tol:
                if (n, flow(e)) in near_recv:
                    continue            # the sender's node received it itself
                out.append(Candidate(n, ts, e, bool(self.nat_of(n))))
            elif flow(e) == f:
                self.offsets.setdefault((n, node), []).append(ts - t)
        return out, local


def _ipvs_key(rec: dict[str, Any]) -> tuple:
    # an expiry's flow as the client receives the node's reset: from the
    # virtual address to the client
    return (rec.get("vaddr"), rec.get("vport"), rec.get("client"), rec.get("cport"))


# ---- the report ------------------------------------------------------------

class FleetReport:
    """Several recordings into one sink (analysis/report.py's CsvStream,
    Rows or _Count): `run(sink)`, then `summary(sink.tally)`."""

    def __init__(self, paths: list[str], window_s: float = 10.0,
                 idle_timeouts: dict[str, float] | None = None, pair_window_s: float = 1.0,
                 since: float | None = None, until: float | None = None, cause: str | None = None,
                 ram_bytes: int | None = None, tolerance_s: float = CLOCK_TOLERANCE_S):
        self.tol = float(tolerance_s)
        self.since, self.until, self.cause = since, until, cause
        self.idle_timeouts = idle_timeouts
        self.warnings: list[str] = []
        files = [_File(p, read_header(p), "") for p in paths]
        by_node: dict[str, list[_File]] = {}
        for f in files:
            f.node = node_of(f.header, os.path.basename(f.path))
            by_node.setdefault(f.node, []).append(f)
        # The fleet's pairing window holds an incident open until a
        # received half a tolerance away has been decided (DECIDE_SLACK_S
        # after the tolerance has passed it).
        pw = max(pair_window_s, 2 * self.tol + DECIDE_SLACK_S + 0.15)
        self.nodes: dict[str, _Node] = {}
        for i, (name, fs) in enumerate(sorted(by_node.items())):
            fs.sort(key=lambda f: (f.header.get("t") or 0.0))
            names: dict[int, str] = {}
            for f in fs:
                for k, v in (f.header.get("netns_names") or {}).items():
                    try:
                        names[int(k)] = str(v)
                    except (TypeError, ValueError):
                        continue
            clf = Classifier(window_s=window_s, idle_timeouts=idle_timeouts, pair_window_s=pw,
                             netns_names=names, ram_bytes=ram_bytes or fs[0].header.get("mem_total"),
                             look_ahead=True)
            self.nodes[name] = _Node(name, i, fs, clf)
            self._clock_steps(name, fs)
        self.matcher = Matcher(self.tol, self._has_nat)
        self.joined: dict[tuple, int] = {}
        self._ids = count(1)
        self._fix_lists: dict[int, list[Fix]] = {}

    # -- checks ------------------------------------------------------------
    def _clock_steps(self, name: str, fs: list[_File]) -> None:
        """Recordings of one boot whose wall clocks differ (by their
        monotonic clocks) beyond the tolerance: said; times are kept as
        each recording has them."""
        base = None
        for f in fs:
            h = f.header
            if not isinstance(h.get("monotonic"), (int, float)) or not h.get("boot_id"):
                continue
            off = h["t"] - h["monotonic"]
            if base is not None and base[0] == h["boot_id"] and abs(off - base[1]) > self.tol:
                self.warnings.append(
                    f"node {name}: the wall clock moved {off - base[1]:+.3f} s between {base[2]} and {f.path} "
                    "(same boot, by their monotonic clocks): each file's times are read as recorded")
            base = (h["boot_id"], off, f.path)

    def _has_nat(self, node: str) -> bool:
        ctx = self.nodes[node].clf.context
        return any((ctx.ctx(ns) or {}).get("nat") for ns in ctx.namespaces())

    # -- the stream --------------------------------------------------------
    def _merged(self) -> Iterator[tuple[float, int, int, dict[str, Any] | None]]:
        def tagged(n: _Node) -> Iterator[tuple[float, int, int, dict[str, Any] | None]]:
            i, t, seq = n.index, 0.0, 0
            for seq, rec in enumerate(n.records()):
                t = rec["t"]
                yield t, i, seq, rec
            yield t, i, seq + 1, None           # the node's stream has ended
        return heapq.merge(*(tagged(n) for n in self.nodes.values()))

    def run(self, sink: Any) -> None:
        """Every record of every node, in time order, into the nodes'
        classifiers; their verdicts, joined, into `sink` in time order.
        Then `summary(sink.tally)` (once the sink has its counts)."""
        nodes = list(self.nodes.values())
        pending: list[tuple[float, int, int, Verdict, str]] = []   # the output, a heap by time
        seq = count()
        pumps = {}
        for n in nodes:
            def put(vs: list[Verdict], node: str = n.name) -> None:
                for v in vs:
                    heapq.heappush(pending, (v.t, next(seq), 0, v, node))
            pumps[n.name] = Pump(n.clf, put)
        fix_lists: dict[int, list[Fix]] = {}
        by_index = {n.index: n for n in nodes}
        matcher = self.matcher
        now = 0.0
        ended: list[tuple[float, _Node]] = []
        fed = 0
        for t, i, _s, rec in self._merged():
            n = by_index[i]
            now = t
            if fed >= FEED_EVERY or t > matcher.next_due() + DECIDE_SLACK_S:
                # the nodes fed up to now (their context, for the decisions),
                # the received resets due decided, the verdicts decided let go
                fed = 0
                self._feed(pumps)
                for rnode, r in matcher.due(t):
                    self._decide(rnode, r)
                self._out(pending, sink, fix_lists, now)
            while ended and ended[0][0] < t:
                # a node whose recordings ended: once no received half can
                # still join its resets, its incidents are decided, so the
                # other nodes' verdicts need not wait for the end
                _, done = ended.pop(0)
                self._feed(pumps)
                pumps[done.name].flush()
                done.flushed = True
            if rec is None:
                ended.append((t + 2 * self.tol + n.clf.pair_window_s, n))
                continue
            kind = rec.get("kind")
            if kind == "reset":
                rec["node"] = n.name
                matcher.see(n.name, rec)
            elif kind == "ct_drop" and rec.get("dport") is not None:
                n.drops.append(rec)
                while n.drops and (n.drops[0]["t"] < t - PROBE_S or len(n.drops) > RECENT_MAX):
                    n.drops.popleft()
            elif kind == "ipvs_expire":
                n.expiries[_ipvs_key(rec)] = rec
                n.expiries.move_to_end(_ipvs_key(rec))
                if len(n.expiries) > EXPIRY_MEMORY:
                    n.expiries.popitem(last=False)
            n.buf.append(rec)
            fed += 1
        self._feed(pumps)
        for rnode, r in matcher.due(float("inf")):
            self._decide(rnode, r)
        self._feed(pumps)
        for n in nodes:
            pumps[n.name].flush()
            n.flushed = True
        self._out(pending, sink, fix_lists, float("inf"))
        self._fix_lists = fix_lists

    def _feed(self, pumps: dict) -> None:
        for other in self.nodes.values():     # every node up to now: their halves are in place
            if other.buf:
                b, other.buf = other.buf, []
                pumps[other.name].feed(b)

    def _decide(self, node: str, r: dict[str, Any]) -> None:
        cands, local = self.matcher.candidates(node, r)
        if local:
            return
        exps = []
        if not cands:
            key = flow(r)
            for n in self.nodes.values():
                e = n.expiries.get(key) if n.name != node else None
                if e is not None:
                    exps.append(Candidate(n.name, e["t"], e))
                if n.name != node:
                    exps += [Candidate(n.name, d["t"], d, self._has_nat(n.name)) for d in n.drops
                             if abs(d["t"] - r["t"]) <= self.tol and dropped(d, r, self._has_nat(n.name))]
        c, how = match(r, node, cands, exps, self.tol)
        if c is not None and self.nodes[c.node].flushed:
            c, how = None, "none"       # its incidents are decided: too late to join (not expected)
        if c is None:
            if how == "ambiguous":
                k = (node, "ipvs" if exps and not cands else "reset")
                self.matcher.ambiguous[k] = self.matcher.ambiguous.get(k, 0) + 1
            return
        # the received half, as the sender's node sees it: beside that node's
        # half (same time), in a namespace of its own that no inode there can be
        copy = dict(r)
        copy["netns"] = f"{node}/{r.get('netns')}"
        copy["t"] = c.t if how != "ipvs" else max(r["t"], c.t)   # a drop: at the drop
        copy["_orig"] = r
        copy.pop("dev_netns", None)
        sender = self.nodes[c.node]
        name = sender.clf.context.names
        own = self.nodes[node].clf.context.names.get(r.get("netns"))
        if own is not None:
            name[copy["netns"]] = own
        r["_joined"] = copy
        r["peer_node"] = c.node
        r["_how"] = (how, c.t, c.node)
        if how in ("flow", "nat"):
            c.rec["peer_node"] = node
        sender.buf.append(copy)
        k = (c.node, node)
        self.joined[k] = self.joined.get(k, 0) + 1

    def _out(self, pending: list, sink: Any, fix_lists: dict, now: float) -> None:
        """Verdicts no classifier can still precede, in time order (the
        oldest at once when too many wait)."""
        wm = now
        for n in self.nodes.values():
            if not n.flushed:
                wm = min(wm, n.clf.horizon())
        wm -= self.tol + self.nodes[next(iter(self.nodes))].clf.pair_window_s
        while pending and (pending[0][0] < wm or len(pending) > OUT_MAX or now == float("inf")):
            _t, _s, _z, v, node = heapq.heappop(pending)
            self._emit(v, node, sink, fix_lists)

    def _emit(self, v: Verdict, node: str, sink: Any, fix_lists: dict) -> None:
        events = []
        notes = []
        names = {n: self.nodes[n].clf.context.names for n in self.nodes}
        for e in v.events:
            if "_joined" in e:
                continue                    # decided on the sender's node
            o = e.get("_orig")
            if o is not None:
                how, ts, snode = o["_how"]
                if v.receiver_netns == e.get("netns"):
                    v.receiver_netns = o.get("netns")
                what = {"flow": "reset sent", "nat": "reset sent (through its NAT)",
                        "ipvs": "IPVS expiry", "drop": "netfilter drop of its packet"}[how]
                notes.append(f"joined across nodes: {what} on {snode}, received on {o.get('node')} "
                             f"{(o['t'] - ts) * 1000:+.0f} ms by their clocks")
                e = o
            if "netns_name" not in e:
                e["netns_name"] = names[e.get("node", node)].get(e.get("netns"))
            events.append(e)
        if not events:
            return
        if notes:
            # the sender's node paired its half with the received one, placed
            # at its own time: the gap between the nodes is in the note
            v.evidence = _NAT_GAP.sub(r"; paired across NAT (\1)", v.evidence) + "; " + "; ".join(notes)
        v.incident = next(self._ids)
        if self.cause is not None and v.cause != self.cause:
            return
        if self.since is not None or self.until is not None:
            events = [e for e in events if (self.since is None or e["t"] >= self.since)
                      and (self.until is None or e["t"] <= self.until)]
            if not events:
                return
        sink.add(v, events)
        if v.fixes and id(v.fixes) not in fix_lists:
            fix_lists[id(v.fixes)] = v.fixes

    # -- the summary -------------------------------------------------------
    def summary(self, tally: Tally) -> Summary:
        fix_lists = self._fix_lists
        warnings = list(self.warnings)
        invalid, first_invalid = 0, None
        findings = []
        for n in self.nodes.values():
            for f in n.files:
                r = f.reader
                if r is None:
                    continue
                warnings += r.warnings
                invalid += r.invalid
                first_invalid = first_invalid or r.first_invalid
                if r.totals is None and not r.truncated:
                    warnings.append(f"{f.path}: no totals line (recording did not end cleanly)")
                if r.totals and r.totals.get("lost"):
                    warnings.append(f"{f.path}: {r.totals['lost']} events were lost in the kernel while recording")
            for path, k in n.skipped.items():
                others = ", ".join(f.path for f in n.files if f.path != path)
                warnings.append(f"node {n.name}: {path} overlaps {others} (recordings of one node are read "
                                f"as one stream): its {k} events at or before the end of the earlier "
                                "ones were skipped")
            ctx = n.clf.context.latest_ctx
            if ctx:
                findings += [replace(f, message=f"node {n.name}: {f.message}")
                             for f in audit(ctx, self.idle_timeouts)]
        for (snd, rcv), dts in sorted(self.matcher.offsets.items()):
            joined = self.joined.get((snd, rcv), 0)
            if len(dts) <= joined:
                continue    # mostly joined: a flow reset again later, not a clock apart
            dts.sort()
            mid = dts[len(dts) // 2]
            warnings.append(f"nodes {snd} and {rcv}: {len(dts)} resets match by their flow only {abs(mid):.3f} s "
                            f"apart (median, {snd} {'ahead' if mid > 0 else 'behind'}), beyond the clock "
                            f"tolerance {self.tol:g} s: not joined ({joined} joined within it); if their clocks "
                            f"are that far apart, rerun with --clock-tolerance {abs(mid) * 1.5:.2g}")
        for (node, what), k in sorted(self.matcher.ambiguous.items()):
            warnings.append(f"node {node}: {k} received resets fit more than one "
                            f"{'IPVS expiry or netfilter drop' if what == 'ipvs' else 'sender'} on other nodes within "
                            f"{self.tol:g} s: not joined (their own node's cause kept)")
        fixes = merge_fixes(f for fl in fix_lists.values() for f in fl)
        ram = next((n.clf.ram_bytes for n in self.nodes.values() if n.clf.ram_bytes), None)
        return summarize(tally, {n.name: n.clf.context for n in self.nodes.values()}, findings, fixes, warnings, ram_bytes=ram,
                         invalid=(invalid, first_invalid))
