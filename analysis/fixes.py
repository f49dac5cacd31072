"""Fixes computed from what was observed, each with where it applies.

Every value here is derived from numbers the tracer saw (peak conntrack
count, the timeouts of the namespace that forgot the flow, the socket's
keepalive), never a fixed recipe. One rule is never broken by a
recommendation: keepalive < IPVS tcp timeout <= conntrack established
timeout (`ordering_ok`); a keepalive equal to a timeout has no margin and
loses the race half the time.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, replace

from .vocab import Cause, Timeout

# Kernel memory per conntrack entry (struct nf_conn plus extensions, slab
# rounded) and per hash bucket; 1M entries come to about 330 MiB.
BYTES_PER_ENTRY = 320
BYTES_PER_BUCKET = 8
# Never size the table above this share of RAM: past it, find the churn.
RAM_SHARE = 0.10
# Keepalive goes to half the smallest idle timeout, never above 600 s (the
# usual 120-600 s guidance clears Azure 240 s, NLB 350 s, GCE 600 s).
KEEPALIVE_CAP_S = 600
HIKARI_MIN_MS = 30_000   # HikariCP refuses keepaliveTime / maxLifetime below 30 s


@dataclass(frozen=True)
class Fix:
    cause: Cause
    scope: str                # "node" | "netns" | "pod" | "pool" | "kube-proxy"
    netns: int | None
    netns_name: str | None
    key: str
    current: object
    value: object
    command: str
    snippet: str | None
    reason: str
    tradeoff: bool = False


@dataclass(frozen=True)
class Where:
    """The namespace a per-netns setting must be changed in."""
    netns: int | None
    name: str | None = None      # /run/netns name, "init", or "pid:N"
    pid: int | None = None       # a process known to live there

    @property
    def is_root(self) -> bool:
        return self.name == "init"

    def prefix(self) -> str:
        """Shell prefix that runs a command inside the namespace."""
        if self.is_root:
            return ""
        if self.name and self.name.startswith("pid:") and self.name[4:].isdigit():
            return f"nsenter --net=/proc/{self.name[4:]}/ns/net "
        if self.name:
            return f"ip netns exec {shlex.quote(self.name)} "
        if self.pid:
            return f"nsenter --net=/proc/{int(self.pid)}/ns/net "
        return ""

    def scope(self) -> str:
        return "node" if self.is_root else "netns"

    def note(self) -> str:
        """Says where to run the command when no prefix can be built."""
        if self.is_root or self.prefix():
            return ""
        return f" (run it inside netns {self.netns}: no name or process is known for it)"


def retarget(fix: Fix, name: str) -> Fix:
    """The same fix for the namespace now called `name` (found again under
    another /run/netns name or through another process than the one it was
    seen with): its commands enter that namespace. Every namespace prefix
    in a command comes from `Where.prefix`, so it is replaced as a whole."""
    old = Where(fix.netns, fix.netns_name).prefix()
    new = Where(fix.netns, name).prefix()
    if not old or old == new:
        return replace(fix, netns_name=name)
    return replace(fix, netns_name=name, command=fix.command.replace(old, new),
                   snippet=fix.snippet.replace(old, new) if fix.snippet else fix.snippet)


# The ordering rule, pair by pair: (lower, upper, lower strictly below).
# A keepalive must come before the timeout it guards (an equal one races
# the expiry); conntrack may hold a flow as long as IPVS does, not shorter.
ORDERING: tuple[tuple[Timeout, Timeout, bool], ...] = (
    (Timeout.IPVS_TCP, Timeout.CT_ESTABLISHED, False),
    (Timeout.KEEPALIVE, Timeout.IPVS_TCP, True),
    (Timeout.KEEPALIVE, Timeout.CT_ESTABLISHED, True),
)


@dataclass(frozen=True)
class OrderBreak:
    """One pair of timeouts out of order."""
    lower: Timeout      # the one that must be smaller
    upper: Timeout
    low: float          # its value
    high: float         # the value of `upper`
    strict: bool        # `lower` must be strictly below `upper`

    @property
    def no_margin(self) -> bool:
        """Equal where strictly below is required: not a wrong order, but the
        first keepalive probe races the expiry."""
        return self.strict and self.low == self.high

    def text(self, names: dict[Timeout, str] | None = None) -> str:
        """"tcp_keepalive_time 7200 >= IPVS tcp timeout 900" (`names`: other
        words for the timeouts)."""
        name = (names or {}).get
        return (f"{name(self.lower, self.lower)} {_whole(self.low)} {'>=' if self.strict else '>'} "
                f"{name(self.upper, self.upper)} {_whole(self.high)}")


def _whole(v: float) -> str:
    return str(int(v)) if v == int(v) else f"{v:g}"


def ordering_breaks(keepalive: float | None, ipvs_tcp: float | None,
                    ct_established: float | None) -> list[OrderBreak]:
    """The pairs that break keepalive < IPVS tcp timeout <= conntrack
    established timeout, in the order of ORDERING; a value not known
    (None) breaks nothing."""
    values = {Timeout.KEEPALIVE: keepalive, Timeout.IPVS_TCP: ipvs_tcp,
              Timeout.CT_ESTABLISHED: ct_established}
    out = []
    for lower, upper, strict in ORDERING:
        lo, hi = values[lower], values[upper]
        if lo is not None and hi is not None and (lo >= hi if strict else lo > hi):
            out.append(OrderBreak(lower, upper, lo, hi, strict))
    return out


def ordering_ok(keepalive: float | None, ipvs_tcp: float | None, ct_established: float | None) -> bool:
    return not ordering_breaks(keepalive, ipvs_tcp, ct_established)


def keepalive_target(timeout_s: float) -> int | None:
    """A tcp_keepalive_time with margin below `timeout_s`; None when no
    whole second below it exists (then the timeout itself must go up)."""
    target = min(int(timeout_s // 2), KEEPALIVE_CAP_S)
    if target < 1 or not target < timeout_s:
        return None
    return target


def _pow2(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1.0, n))))


def _sysctl_fix(cause: Cause, where: Where, key: str, current: object, value: object,
                reason: str, tradeoff: bool = False) -> Fix:
    cmd = f"{where.prefix()}sysctl -w {key}={value}"
    return Fix(cause, where.scope(), where.netns, where.name, key, current, value, cmd,
               None, reason + where.note(), tradeoff)


def conntrack_full_fixes(current_max: int | None, current_buckets: int | None, peak: int,
                         full_seen: bool, ram_bytes: int | None = None) -> list[Fix]:
    """nf_conntrack_max from the observed peak with 2x headroom (a table
    that was full hides the real demand, so then from max), buckets >= max/4,
    checked against RAM. Both sysctls are global: node scope."""
    need = max(peak, current_max or 0) if full_seen else peak
    target = _pow2(max(need, 1) * 2)
    if current_max:
        target = max(target, current_max)
    capped = ""
    if ram_bytes:
        limit = int(ram_bytes * RAM_SHARE)
        while target > 1024 and target * BYTES_PER_ENTRY + (target // 4) * BYTES_PER_BUCKET > limit:
            target //= 2
            capped = (f"; capped at {RAM_SHARE:.0%} of RAM ({ram_bytes / 2**30:.1f} GiB): "
                      "find the connection churn (a client without pooling) or NOTRACK it")
    buckets = max(_pow2(target / 4), current_buckets or 0)
    mem = target * BYTES_PER_ENTRY + buckets * BYTES_PER_BUCKET
    reason = (f"peak {peak} entries{' (table was full)' if full_seen else ''} vs max {current_max}; "
              f"{target} entries use about {mem / 2**20:.0f} MiB of kernel memory{capped}")
    snippet = (f"# /etc/sysctl.d/90-conntrack.conf\n"
               f"net.netfilter.nf_conntrack_max = {target}\n"
               f"net.netfilter.nf_conntrack_buckets = {buckets}\n")
    out = [
        Fix(Cause.CONNTRACK_FULL, "node", None, None, "net.netfilter.nf_conntrack_max", current_max, target,
            f"sysctl -w net.netfilter.nf_conntrack_max={target}", snippet, reason),
        Fix(Cause.CONNTRACK_FULL, "node", None, None, "net.netfilter.nf_conntrack_buckets", current_buckets,
            buckets, f"sysctl -w net.netfilter.nf_conntrack_buckets={buckets}", snippet,
            f"buckets >= max/4 keeps hash chains short ({buckets} for max {target})"),
        # kube-proxy rewrites nf_conntrack_max at start (max(32768 x cores, 131072))
        # unless told to leave it alone.
        Fix(Cause.CONNTRACK_FULL, "kube-proxy", None, None, "conntrack.maxPerCore", None, 0,
            "", "conntrack:\n  maxPerCore: 0   # keep the node's nf_conntrack_max\n",
            "kube-proxy resets nf_conntrack_max on restart; maxPerCore 0 keeps the node's value"),
    ]
    return out


def timeout_mismatch_fixes(where: Where, ct_established: float, ipvs_tcp: float,
                           keepalive_s: float | None = None, receiver: Where | None = None,
                           sysctl_now: float | None = None) -> list[Fix]:
    value = int(math.ceil(ipvs_tcp))
    out = [_sysctl_fix(Cause.TIMEOUT_MISMATCH, where, "net.netfilter.nf_conntrack_tcp_timeout_established",
                       int(ct_established), value,
                       f"conntrack established timeout {ct_established:g} s < IPVS tcp timeout {ipvs_tcp:g} s: "
                       "conntrack forgets flows IPVS still holds; raise it to at least the IPVS timeout"),
           Fix(Cause.TIMEOUT_MISMATCH, "kube-proxy", where.netns, where.name, "conntrack.tcpEstablishedTimeout",
               int(ct_established), value, "",
               f"conntrack:\n  tcpEstablishedTimeout: {value}s\n",
               "kube-proxy sets the established timeout at start; set it there too")]
    # The fix must leave the whole ordering intact: a keepalive at or above
    # the IPVS timeout would still let IPVS forget the idle flow.
    if keepalive_s is None or not ordering_ok(keepalive_s, ipvs_tcp, None):
        out += keepalive_fixes(receiver or where, keepalive_s, ipvs_tcp, "IPVS tcp timeout",
                               cause=Cause.TIMEOUT_MISMATCH, sysctl_now=sysctl_now)
    return out


def keepalive_fixes(where: Where, keepalive_s: float | None, timeout_s: float, timeout_label: str,
                    cause: Cause = Cause.KEEPALIVE, sysctl_now: float | None = None) -> list[Fix]:
    """tcp_keepalive_time below the smallest idle timeout, in the namespace
    of the socket that was reset (pods do not inherit the node's value), the
    pod sysctl snippet, and the pool settings of common MySQL clients."""
    target = keepalive_target(timeout_s)
    if target is None:
        return []
    cur = "off" if keepalive_s is None else int(keepalive_s)
    why = (f"smallest idle timeout on the path: {timeout_label} {timeout_s:g} s; keepalive {cur}"
           f"{' s' if keepalive_s is not None else ''} -> {target} s")
    if keepalive_s is None:
        why += "; the socket has SO_KEEPALIVE off, so the client must enable it (or use the pool settings)"
    now = int(sysctl_now) if sysctl_now is not None else (None if keepalive_s is None else int(keepalive_s))
    out = [_sysctl_fix(cause, where, "net.ipv4.tcp_keepalive_time", now, target,
                       why + "; set in the socket's own namespace (a pod does not inherit the node's value)")]
    out.append(Fix(cause, "pod", where.netns, where.name, "securityContext.sysctls", cur, target, "",
                   "securityContext:\n  sysctls:\n  - name: net.ipv4.tcp_keepalive_time\n"
                   f"    value: \"{target}\"\n",
                   "pod-level sysctl (safe since Kubernetes 1.29; not with hostNetwork)"))
    ms = target * 1000
    life_s = timeout_s - max(5.0, timeout_s * 0.05)
    if ms >= HIKARI_MIN_MS:
        hik = f"hikari.setKeepaliveTime({ms});  // < maxLifetime"
        if life_s * 1000 >= HIKARI_MIN_MS and life_s * 1000 > ms:
            hik += f"\nhikari.setMaxLifetime({int(life_s * 1000)});"
        out.append(Fix(cause, "pool", where.netns, where.name, "hikaricp.keepaliveTime", None, ms, "", hik,
                       "HikariCP pings idle connections below the idle timeout"))
    else:
        out.append(Fix(cause, "pool", where.netns, where.name, "hikaricp.idleTimeout", None, HIKARI_MIN_MS, "",
                       f"// the {timeout_s:g} s timeout is below HikariCP's 30 s minimum keepalive:\n"
                       "// raise the timeout, or rely on tcp_keepalive_time with SO_KEEPALIVE on",
                       "HikariCP cannot ping faster than every 30 s"))
    out.append(Fix(cause, "pool", where.netns, where.name, "go.SetConnMaxIdleTime", None, target, "",
                   f"db.SetConnMaxIdleTime({target} * time.Second)",
                   "Go database/sql closes idle connections before the path forgets them"))
    out.append(Fix(cause, "pool", where.netns, where.name, "sqlalchemy.pool_recycle", None, target, "",
                   f"create_engine(url, pool_pre_ping=True, pool_recycle={target})",
                   "SQLAlchemy tests and recycles connections before the idle timeout"))
    return out


def invalid_fixes(where: Where, be_liberal: int | None) -> list[Fix]:
    pre = where.prefix()
    return [
        _sysctl_fix(Cause.CONNTRACK_INVALID, where, "net.netfilter.nf_conntrack_tcp_be_liberal", be_liberal, 1,
                    "out-of-window segments stop being INVALID, so replies keep their NAT; "
                    "trade-off: conntrack stops checking TCP windows in this namespace", tradeoff=True),
        Fix(Cause.CONNTRACK_INVALID, where.scope(), where.netns, where.name, "nft.ct_state_invalid_drop", None,
            "drop", f"{pre}nft add table inet rsttrace ; {pre}nft add chain inet rsttrace forward "
            "'{ type filter hook forward priority -1 ; }' ; "
            f"{pre}nft add rule inet rsttrace forward ct state invalid drop",
            None, "drop INVALID packets instead of letting them reach a stack that resets them "
                  "(what kube-proxy >= 1.29 does when be_liberal is 0); trade-off: the packet is lost "
                  "and TCP retransmits" + where.note(), tradeoff=True),
    ]
