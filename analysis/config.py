"""Configuration audit: settings that will cause resets before any happens.

`audit(ctx)` takes a `ctx` record (or its `namespaces` list) and checks each
namespace against the ordering rule keepalive < IPVS tcp timeout <=
conntrack established timeout (analysis/fixes.py `ordering_breaks`), equal
values (no margin), a conntrack table near full and too few hash buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .fixes import ordering_breaks
from .vocab import FindingKey, Severity, Timeout

NEAR_FULL = 0.80
FULL = 0.95


@dataclass(frozen=True)
class Finding:
    severity: Severity
    netns: int | None
    netns_name: str | None
    key: FindingKey
    message: str
    values: tuple = ()
    # the two timeouts compared, (lower, upper) of the ordering rule
    pair: tuple[Timeout, Timeout] | tuple[()] = ()


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _where(ns: Any, name: Any) -> str:
    return f"netns {name} ({ns})" if name else f"netns {ns}"


def audit(ctx: dict[str, Any] | Iterable[dict[str, Any]],
          idle_timeouts: dict[str, float] | None = None) -> list[Finding]:
    namespaces = ctx.get("namespaces") or [] if isinstance(ctx, dict) else list(ctx)
    out: list[Finding] = []
    for n in namespaces:
        ns, name = n.get("netns"), n.get("name")
        where = _where(ns, name)
        sc = n.get("sysctl") or {}
        ka = _num(sc.get("tcp_keepalive_time"))
        est = _num(sc.get("nf_conntrack_tcp_timeout_established"))
        ipvs = _num((n.get("ipvs") or {}).get("tcp"))

        def add(sev: Severity, key: FindingKey, msg: str, *vals: Any,
                pair: tuple[Timeout, Timeout] | tuple[()] = ()) -> None:
            out.append(Finding(sev, ns, name, key, f"{where}: {msg}", tuple(vals), pair))

        for b in ordering_breaks(ka, ipvs, est):
            pair = (b.lower, b.upper)
            if b.lower is Timeout.IPVS_TCP:
                add(Severity.ERROR, FindingKey.ORDERING,
                    f"conntrack established timeout {est:g} s < IPVS tcp timeout {ipvs:g} s: "
                    "conntrack forgets flows IPVS still holds (timeout mismatch)", est, ipvs, pair=pair)
            elif b.no_margin:
                add(Severity.WARNING, FindingKey.NO_MARGIN,
                    f"tcp_keepalive_time {ka:g} s = {b.upper} {b.high:g} s leaves no "
                    "margin: the first probe races the expiry; keep keepalive well below it",
                    ka, b.high, pair=pair)
            else:
                add(Severity.ERROR, FindingKey.ORDERING,
                    f"tcp_keepalive_time {ka:g} s > {b.upper} {b.high:g} s: idle flows "
                    "are forgotten before the first keepalive probe", ka, b.high, pair=pair)
        if ka is not None:
            for label, val in (idle_timeouts or {}).items():
                if ka >= val:
                    add(Severity.WARNING, FindingKey.IDLE_TIMEOUT,
                        f"tcp_keepalive_time {ka:g} s >= {label} idle timeout "
                        f"{val:g} s (sockets with SO_KEEPALIVE still lose idle flows there)", ka, val)
        ct = n.get("ct") or {}
        count, mx, buckets = ct.get("count"), ct.get("max"), ct.get("buckets")
        if isinstance(count, int) and isinstance(mx, int) and mx > 0:
            if count >= FULL * mx:
                add(Severity.ERROR, FindingKey.CT_FULL, f"conntrack {count}/{mx} entries ({count / mx:.0%}): "
                    "the table is full, new connections are dropped", count, mx)
            elif count >= NEAR_FULL * mx:
                add(Severity.WARNING, FindingKey.CT_NEAR_FULL, f"conntrack {count}/{mx} entries ({count / mx:.0%})", count, mx)
        if isinstance(buckets, int) and isinstance(mx, int) and buckets * 4 < mx:
            add(Severity.WARNING, FindingKey.BUCKETS, f"nf_conntrack_buckets {buckets} < max/4 ({mx // 4}): "
                "long hash chains", buckets, mx)
    return out
