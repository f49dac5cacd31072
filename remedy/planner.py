"""From proposals to a validated Plan.

Proposals for the same key in the same namespace are merged (the stronger
value wins: a shorter keepalive, a larger table, a longer timeout; `--set`
wins over everything), compared with what the kernel holds now (a value that
already fixes the problem is left alone, which makes a second run a no-op),
and the result is validated as a whole before anything is touched:
ranges, the memory a conntrack table may take, and the timeout ordering
keepalive < IPVS tcp timeout <= conntrack established timeout (the
analysis's rule, analysis/fixes.py `ordering_breaks`).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from rsttrace.analysis.fixes import ordering_breaks
from rsttrace.analysis.vocab import Timeout
from rsttrace.remedy import keys as K
from rsttrace.remedy.model import Change, Plan, Proposal, Target
from rsttrace.remedy.netns import Access

# Per entry: struct nf_conn plus its slab overhead is about 320 B on 64-bit;
# a bucket is one hlist_nulls_head pointer.
MEM_PER_ENTRY = 320
MEM_PER_BUCKET = 8
DEFAULT_MEM_SHARE = 0.125
ORDERING_KEYS = (K.KEEPALIVE_TIME, K.IPVS_TCP, K.CT_ESTABLISHED)
# the ordering rule's timeouts as the plan names them
NAMES = {Timeout.KEEPALIVE: "tcp_keepalive_time", Timeout.IPVS_TCP: "IPVS tcp timeout",
         Timeout.CT_ESTABLISHED: "nf_conntrack_tcp_timeout_established"}


@dataclass
class PlanOptions:
    allow_explicit: set[str] = field(default_factory=set)  # e.g. {K.CT_BE_LIBERAL}
    mem_share: float = DEFAULT_MEM_SHARE


@dataclass
class _Merged:
    target: Target
    spec: K.KeySpec
    value: int
    manual: bool
    reasons: list[str]


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _merge(proposals: list[Proposal], node: Target, opts: PlanOptions,
           plan: Plan) -> "OrderedDict[tuple[int, str], _Merged]":
    merged: OrderedDict[tuple[int, str], _Merged] = OrderedDict()
    for p in proposals:
        try:
            spec = K.spec_for(p.key)
        except K.UnknownKey as e:
            (plan.errors if p.manual else plan.skipped).append(str(e))
            continue
        target = p.target
        if spec.scope == "global" and target.inode != node.inode:
            if p.manual:
                plan.errors.append(f"{spec.key} is one value for the whole node: "
                                   "set it without --netns")
                continue
            target = node
        if not spec.lo <= p.value <= spec.hi:
            plan.errors.append(f"{spec.key}={p.value} is out of range "
                               f"{spec.lo}..{spec.hi} {spec.unit}".rstrip())
            continue
        if spec.explicit and spec.key not in opts.allow_explicit and not p.manual:
            plan.skipped.append(
                f"{spec.key}={p.value} in {target.label} is a trade-off (it accepts "
                f"out-of-window segments); apply it with --be-liberal ({p.reason})")
            continue
        reason = p.reason or ("asked with --set" if p.manual else "")
        k = (target.inode, spec.key)
        m = merged.get(k)
        if m is None:
            merged[k] = _Merged(target, spec, p.value, p.manual, [reason] if reason else [])
            continue
        if p.manual and not m.manual:
            m.value, m.manual = p.value, True
        elif p.manual == m.manual:
            m.value = p.value if p.manual else spec.stronger(m.value, p.value)
        if reason and reason not in m.reasons:
            m.reasons.append(reason)
    return merged


def make_plan(proposals: list[Proposal], access: Access, node: Target,
              opts: PlanOptions | None = None) -> Plan:
    opts = opts or PlanOptions()
    plan = Plan()
    merged = _merge(proposals, node, opts, plan)

    # Current values: every key asked for, plus the ordering keys of each
    # namespace touched, plus the node's (a pod's keepalive must stay below the
    # node's IPVS and conntrack timeouts).
    targets: dict[int, Target] = {node.inode: node}
    wanted: dict[int, set[str]] = {node.inode: set(ORDERING_KEYS) | {K.CT_MAX, K.CT_BUCKETS}}
    for (ino, key), m in merged.items():
        targets[ino] = m.target
        wanted.setdefault(ino, set(ORDERING_KEYS)).add(key)
    ipvs = {ino: access.ipvs_available(t) for ino, t in targets.items()}
    current: dict[int, dict[str, int | None]] = {}
    for ino, t in targets.items():
        ks = sorted(k for k in wanted[ino] if ipvs[ino] or k not in K.IPVS_KEYS)
        current[ino] = access.read(t, ks)

    for (ino, key), m in merged.items():
        t, spec = m.target, m.spec
        why = "; ".join(m.reasons)
        if spec.kind == "ipvs" and not ipvs[ino]:
            msg = (f"{key}={m.value} in {t.label}: IPVS is not in this kernel or "
                   "namespace, nothing to change there")
            (plan.errors if m.manual else plan.skipped).append(msg)
            continue
        via = "ipvs" if spec.kind == "ipvs" else "sysctl"
        if key == K.CT_BUCKETS:
            via = access.buckets_via()
            if via == "none":
                plan.skipped.append(f"{key}: neither the sysctl nor the nf_conntrack "
                                    "hashsize parameter is writable on this kernel")
                continue
        cur = current[ino].get(key)
        if cur is None:
            msg = f"{key} does not exist in {t.label}; nothing to change"
            (plan.errors if m.manual else plan.skipped).append(msg)
            continue
        if cur == m.value or (not m.manual and spec.at_least_as_strong(cur, m.value)):
            plan.skipped.append(f"{key} in {t.label} is already {cur} (asked {m.value})")
            continue
        plan.changes.append(Change(t, key, cur, m.value, m.reasons, spec.scope, via))

    _add_buckets(plan, current[node.inode], node, access)
    if plan.changes:
        _check_memory(plan, current[node.inode], access, opts)
        _check_ordering(plan, targets, current, ipvs, node)
    return plan


def resulting(plan: Plan, inode: int, current: dict[str, int | None]) -> dict[str, int | None]:
    out = dict(current)
    for c in plan.changes:
        if c.target.inode == inode:
            out[c.key] = c.new
    return out


def _add_buckets(plan: Plan, node_cur: dict[str, int | None], node: Target,
                 access: Access) -> None:
    after = resulting(plan, node.inode, node_cur)
    mx, buckets = after.get(K.CT_MAX), after.get(K.CT_BUCKETS)
    if not any(c.key == K.CT_MAX for c in plan.changes) or mx is None or buckets is None:
        return
    # The kernel rounds a hash table up to whole pages of bucket pointers;
    # asking for that size makes the read-back match.
    per_page = os.sysconf("SC_PAGE_SIZE") // 8
    need = math.ceil(math.ceil(mx / 4) / per_page) * per_page
    if buckets >= need or any(c.key == K.CT_BUCKETS for c in plan.changes):
        return
    via = access.buckets_via()
    if via == "none":
        plan.warnings.append(f"nf_conntrack_buckets {buckets} < max/4 ({need}) but it "
                             "cannot be changed on this kernel")
        return
    plan.changes.append(Change(node, K.CT_BUCKETS, buckets, need,
                               [f"keep buckets >= max/4 ({mx}/4) so hash chains stay short"],
                               "global", via))


def _check_memory(plan: Plan, node_cur: dict[str, int | None], access: Access,
                  opts: PlanOptions) -> None:
    if not any(c.key in (K.CT_MAX, K.CT_BUCKETS) for c in plan.changes):
        return
    after = {**node_cur, **{c.key: c.new for c in plan.changes if c.scope == "global"}}
    mx, buckets = after.get(K.CT_MAX) or 0, after.get(K.CT_BUCKETS) or 0
    need = mx * MEM_PER_ENTRY + buckets * MEM_PER_BUCKET
    ram = access.mem_total()
    limit = ram * opts.mem_share
    if need > limit:
        plan.errors.append(
            f"nf_conntrack_max {mx} with {buckets} buckets can take {_gib(need)} "
            f"({MEM_PER_ENTRY} B/entry + {MEM_PER_BUCKET} B/bucket), over "
            f"{opts.mem_share:.1%} of this node's {_gib(ram)} RAM ({_gib(limit)}); "
            "choose a smaller nf_conntrack_max")


def _check_ordering(plan: Plan, targets: dict[int, Target],
                    current: dict[int, dict[str, int | None]],
                    ipvs: dict[int, bool], node: Target) -> None:
    node_after = resulting(plan, node.inode, current[node.inode])
    for ino, t in targets.items():
        touched = {c.key for c in plan.changes if c.target.inode == ino} & set(ORDERING_KEYS)
        if not touched:
            continue
        after = resulting(plan, ino, current[ino])
        ka, ct = after.get(K.KEEPALIVE_TIME), after.get(K.CT_ESTABLISHED)
        vs = after.get(K.IPVS_TCP) if ipvs[ino] else None
        # without IPVS the rule is keepalive < conntrack established alone
        bad = [b.text(NAMES) for b in ordering_breaks(ka, vs, ct)]
        if bad:
            plan.errors.append(
                f"in {t.label} after the change: {', '.join(bad)}; the order must be "
                "keepalive < IPVS tcp timeout <= conntrack established timeout")
        # A namespace's keepalive must also beat the node's stateful hops.
        if ino != node.inode and K.KEEPALIVE_TIME in touched and ka is not None:
            node_vs = node_after.get(K.IPVS_TCP) if ipvs[node.inode] else None
            for b in ordering_breaks(ka, node_vs, node_after.get(K.CT_ESTABLISHED)):
                if b.lower is Timeout.KEEPALIVE:
                    plan.errors.append(
                        f"tcp_keepalive_time {ka} in {t.label} is not below the node's "
                        f"{NAMES[b.upper]} {b.high}; idle connections would still be forgotten")
