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
from typing import Iterable

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
    # What this value satisfies: the requirement it was computed for
    # ("keepalive: conntrack established timeout 2 s"), and once fixes of
    # several incidents are merged into one per setting (`FixBook`), each
    # of theirs with the value it asked for.
    covers: tuple[str, ...] = ()


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


def _needing(fixes: list[Fix], need: str) -> list[Fix]:
    """The fixes, each covering `need` (unless it says what it covers)."""
    return [f if f.covers else replace(f, covers=(need,)) for f in fixes]


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
    return _needing(out, f"conntrack_full: peak {peak} entries{' (table full)' if full_seen else ''}")


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
    return _needing(out, f"timeout_mismatch: conntrack established {ct_established:g} s "
                         f"< IPVS tcp {ipvs_tcp:g} s")


def keepalive_fixes(where: Where, keepalive_s: float | None, timeout_s: float, timeout_label: str,
                    cause: Cause = Cause.KEEPALIVE, sysctl_now: float | None = None,
                    proxy: bool = False) -> list[Fix]:
    """tcp_keepalive_time below the smallest idle timeout, in the namespace
    of the socket that was reset (pods do not inherit the node's value), the
    pod sysctl snippet, and the pool settings of common MySQL clients.
    `proxy`: the timeout may belong to an application proxy, which counts
    data only (keepalive probes do not refresh it): the pool's idle time
    must be below it too, and the pool fixes say so."""
    target = keepalive_target(timeout_s)
    if target is None:
        return []
    pool_note = ("; an application proxy (HAProxy, ProxySQL, Envoy) counts data only, so "
                 "keepalive probes do not keep it: the pool's idle time must be below the "
                 "timeout too" if proxy else "")
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
                       "HikariCP pings idle connections below the idle timeout" + pool_note))
    else:
        out.append(Fix(cause, "pool", where.netns, where.name, "hikaricp.idleTimeout", None, HIKARI_MIN_MS, "",
                       f"// the {timeout_s:g} s timeout is below HikariCP's 30 s minimum keepalive:\n"
                       "// raise the timeout, or rely on tcp_keepalive_time with SO_KEEPALIVE on",
                       "HikariCP cannot ping faster than every 30 s"))
    out.append(Fix(cause, "pool", where.netns, where.name, "go.SetConnMaxIdleTime", None, target, "",
                   f"db.SetConnMaxIdleTime({target} * time.Second)",
                   "Go database/sql closes idle connections before the path forgets them" + pool_note))
    out.append(Fix(cause, "pool", where.netns, where.name, "sqlalchemy.pool_recycle", None, target, "",
                   f"create_engine(url, pool_pre_ping=True, pool_recycle={target})",
                   "SQLAlchemy tests and recycles connections before the idle timeout" + pool_note))
    return _needing(out, f"{cause}: {timeout_label} {timeout_s:g} s")


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


def pool_idle_target(timeout_s: float) -> float:
    """An idle life for pooled connections with margin below a server's
    idle timeout: 10 % below it, at least min(5 s, half of it)."""
    x = timeout_s - max(0.1 * timeout_s, min(5.0, timeout_s / 2))
    return float(int(x)) if x >= 10 else round(x, 1)


def peer_closed_fixes(where: Where, after_fin_s: float | None = None,
                      idle_s: float | None = None) -> list[Fix]:
    """The server closed an idle session and the pool used the connection
    later. No sysctl helps: the pool must drop a connection before the
    server's idle timeout (MySQL/MariaDB `wait_timeout`, PgBouncer
    `client_idle_timeout`, an HTTP server's keep-alive timeout), test it
    before use, or the server must wait longer.

    `idle_s`: the server reset the connection when it timed out, after this
    idle time: its timeout, so the values are numbers below it.
    `after_fin_s`: the server closed with a FIN and the pool wrote this long
    after it; the server's timeout is not visible from the client's socket
    (its idle time counts from the FIN), so the values are relative to it."""
    if idle_s is not None:
        t = pool_idle_target(idle_s)
        seen = f"the server closed the connection after {idle_s:g} s idle"
        why = f"keep a connection's idle life below the server's idle timeout; {seen}"
        ms = int(t * 1000)
        hik = (f"hikari.setIdleTimeout({ms});\nhikari.setMaxLifetime({ms});" if ms >= HIKARI_MIN_MS else
               f"// {t:g} s is below HikariCP's minimums (idleTimeout 10 s, maxLifetime 30 s):\n"
               "// raise the server's timeout instead")
        return _needing([
            Fix(Cause.PEER_CLOSED, "pool", where.netns, where.name, "sqlalchemy.pool_recycle", None, t, "",
                f"create_engine(url, pool_pre_ping=True, pool_recycle={t:g})",
                why + "; pool_pre_ping tests each connection before use"),
            Fix(Cause.PEER_CLOSED, "pool", where.netns, where.name, "go.SetConnMaxIdleTime", None, t, "",
                f"db.SetConnMaxIdleTime({int(t * 1000)} * time.Millisecond)", why),
            Fix(Cause.PEER_CLOSED, "pool", where.netns, where.name, "hikaricp.idleTimeout", None, ms, "", hik, why),
            Fix(Cause.PEER_CLOSED, "server", None, None, "mysql.wait_timeout", None, f"above {idle_s:g} s", "",
                "SET GLOBAL wait_timeout = <longer than the pool keeps an idle connection>;\n"
                "-- (interactive_timeout for interactive clients; PgBouncer: client_idle_timeout)",
                f"or let the server wait longer than the pool keeps a connection idle; {seen}"),
        ], f"peer_closed: a server idle timeout of {idle_s:g} s")
    seen = (f"the pool wrote {after_fin_s:g} s after the server closed the connection"
            if after_fin_s is not None else "the pool wrote after the server closed the connection")
    why = f"keep a connection's idle life below the server's idle timeout; {seen}"
    return _needing([
        Fix(Cause.PEER_CLOSED, "pool", where.netns, where.name, "sqlalchemy.pool_recycle", None,
            "server idle timeout - 5 s", "",
            "create_engine(url, pool_pre_ping=True, pool_recycle=SERVER_IDLE_TIMEOUT_S - 5)",
            why + "; pool_pre_ping tests each connection before use"),
        Fix(Cause.PEER_CLOSED, "pool", where.netns, where.name, "go.SetConnMaxIdleTime", None,
            "server idle timeout - 5 s", "",
            "db.SetConnMaxIdleTime(serverIdleTimeout - 5*time.Second)\n"
            "db.SetConnMaxLifetime(serverIdleTimeout - 5*time.Second)", why),
        Fix(Cause.PEER_CLOSED, "pool", where.netns, where.name, "hikaricp.idleTimeout", None,
            "server idle timeout - 5 s", "",
            "// a few seconds below the server's idle timeout (MySQL: SHOW VARIABLES LIKE 'wait_timeout')\n"
            "hikari.setIdleTimeout(SERVER_IDLE_TIMEOUT_MS - 5000);\n"
            "hikari.setMaxLifetime(SERVER_IDLE_TIMEOUT_MS - 5000);", why),
        Fix(Cause.PEER_CLOSED, "server", None, None, "mysql.wait_timeout", None, "above the pool's idle life", "",
            "SET GLOBAL wait_timeout = <longer than the pool keeps an idle connection>;\n"
            "-- (interactive_timeout for interactive clients; PgBouncer: client_idle_timeout)",
            f"or let the server wait longer than the pool keeps a connection idle; {seen}"),
    ], "peer_closed: a server idle timeout (it closed with a FIN; its length not seen)")


def firewall_fixes(where: Where, rule: dict | None, flow: str) -> list[Fix]:
    """A netfilter rule answered the flow's packet with a reset. Whether the
    traffic should pass is a policy decision, so the fix names the rule and
    how to remove or narrow it, as a trade-off (never applied on its own)."""
    pre = where.prefix()
    need = f"firewall_reject: {flow}"
    if rule is None:
        return [Fix(Cause.FIREWALL_REJECT, where.scope(), where.netns, where.name, "firewall rule", None,
                    "find the reject rule", f"{pre}nft -a list ruleset | grep -n reject", None,
                    f"a rule in this namespace answered {flow} with a reset; list the rules that "
                    "reject and change the one that matches" + where.note(), tradeoff=True, covers=(need,))]
    ref, cmd = rule_ref(rule)
    text = str(rule.get("text") or "")
    return [Fix(Cause.FIREWALL_REJECT, where.scope(), where.netns, where.name, ref, text, "delete or narrow",
                f"{pre}{cmd}" if cmd else "", None,
                f"`{text}` answered {flow} with a reset; if this traffic is allowed, delete the rule "
                "or narrow its match (if it is not, the client must stop connecting there)" + where.note(),
                tradeoff=True, covers=(need,))]


def rule_ref(rule: dict) -> tuple[str, str]:
    """(a name for a recorded firewall rule, the command that deletes it)."""
    fam, table, chain = (str(rule.get(k) or "?") for k in ("family", "table", "chain"))
    if rule.get("source") == "iptables":
        # iptables-save's own line (`-A CHAIN match... -j REJECT ...`): the
        # same specification with -D deletes it
        spec = str(rule.get("text") or "")
        tool = "ip6tables" if fam == "ip6" else "iptables"
        cmd = ""
        if spec.startswith(f"-A {chain} "):
            cmd = f"{tool} -t {shlex.quote(table)} -D {shlex.quote(chain)} {spec[len(chain) + 4:]}"
        return f"{tool} {table} {chain}: {spec}", cmd
    handle = rule.get("handle")
    ref = f"nft {fam} {table} {chain} handle {handle}"
    cmd = (f"nft delete rule {shlex.quote(fam)} {shlex.quote(table)} {shlex.quote(chain)} handle {int(handle)}"
           if isinstance(handle, int) else "")
    return ref, cmd


# Which value of a setting is the stricter: the one every incident's fix is
# satisfied by. A shorter keepalive or pool idle time satisfies every
# timeout above it; a larger table or a longer timeout every demand below it.
_SMALLER_WINS = ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes",
                 "securityContext.sysctls", "keepaliveTime", "idleTimeout", "maxLifetime",
                 "SetConnMaxIdleTime", "SetConnMaxLifetime", "pool_recycle")


def _stricter(key: str, a: object, b: object) -> bool:
    """True when value `a` is stricter than `b` for `key` (numbers only)."""
    if not (isinstance(a, (int, float)) and isinstance(b, (int, float))) or isinstance(a, bool):
        return False
    smaller = any(key.endswith(k) for k in _SMALLER_WINS)
    return a < b if smaller else a > b


COVERS_MAX = 8      # requirements listed per merged fix
BOOK_SETTINGS = 4096  # settings a FixBook keeps (the first asked for go first)


class FixBook:
    """One fix per (scope, namespace, setting) over every incident seen:
    the strictest value any incident asked for, which satisfies them all,
    with `covers` listing what each asked ("keepalive: smallest idle
    timeout on the path: ... (asks 3)"). A requirement that is not a number
    (a pool setting "below the server's idle timeout") is listed in
    `covers` of the numeric value chosen. Memory is bounded: at most
    BOOK_SETTINGS settings and COVERS_MAX requirements each, whatever the
    number of incidents (the live screen keeps one for its whole run)."""

    def __init__(self) -> None:
        self._fix: dict[tuple, Fix] = {}
        self._covers: dict[tuple, list[str]] = {}
        self._more: dict[tuple, int] = {}
        self._lists: dict[int, list[Fix]] = {}     # fix lists already taken (verdicts share them)

    def add(self, fixes: Iterable[Fix]) -> "FixBook":
        if isinstance(fixes, list):
            # one list object per cause and place: taken once (held so its id stays its own)
            if self._lists.get(id(fixes)) is fixes:
                return self
            if len(self._lists) > BOOK_SETTINGS:
                self._lists.clear()
            self._lists[id(fixes)] = fixes
        for f in fixes:
            self._add(f)
        return self

    def _add(self, f: Fix) -> None:
        k = (f.scope, f.netns, f.key)
        needs = [f"{c} (asks {f.value})" for c in f.covers or (f"{f.cause}: {f.reason.split(';')[0]}",)]
        cur = self._fix.get(k)
        if cur is None:
            if len(self._fix) >= BOOK_SETTINGS:
                old = next(iter(self._fix))
                for d in (self._fix, self._covers, self._more):
                    d.pop(old, None)
            self._fix[k] = f
            self._covers[k] = []
        covers = self._covers[k]
        for need in needs:
            if need in covers:
                continue
            if len(covers) < COVERS_MAX:
                covers.append(need)
            else:
                self._more[k] = self._more.get(k, 0) + 1
        if cur is None:
            return
        if _stricter(f.key, f.value, cur.value) or (
                not isinstance(cur.value, (int, float)) and isinstance(f.value, (int, float))):
            self._fix[k] = f

    def _settled(self, k: tuple) -> Fix:
        f, covers = self._fix[k], self._covers[k]
        more = self._more.get(k)
        if more:
            covers = covers + [f"and {more} more"]
        return replace(f, covers=tuple(covers))

    def merged(self) -> list[Fix]:
        """Every setting, in the order each was first asked for."""
        return [self._settled(k) for k in self._fix]

    def settle(self, fixes: Iterable[Fix]) -> list[Fix]:
        """The merged fix for each setting of `fixes` (one incident's), as
        every incident seen asks it; a setting never added stays as given."""
        out, done = [], set()
        for f in fixes:
            k = (f.scope, f.netns, f.key)
            if k in done:
                continue
            done.add(k)
            out.append(self._settled(k) if k in self._fix else f)
        return out


def merge_fixes(fixes: Iterable[Fix]) -> list[Fix]:
    """The fixes of many incidents as one per setting (`FixBook`)."""
    return FixBook().add(list(fixes)).merged()
