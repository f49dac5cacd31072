"""Configuration audit: settings that will cause resets before any happens.

`audit(ctx)` takes a `ctx` record (or its `namespaces` list) and checks each
namespace against the ordering rule keepalive < IPVS tcp timeout <=
conntrack established timeout, equal values (no margin), a conntrack table
near full and too few hash buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

NEAR_FULL = 0.80
FULL = 0.95


@dataclass(frozen=True)
class Finding:
    severity: str              # "error" | "warning"
    netns: int | None
    netns_name: str | None
    key: str                   # short id: "ordering", "no_margin", "ct_near_full", "buckets", "idle_timeout"
    message: str
    values: tuple = ()


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

        def add(sev: str, key: str, msg: str, *vals: Any) -> None:
            out.append(Finding(sev, ns, name, key, f"{where}: {msg}", tuple(vals)))

        if ipvs is not None and est is not None and est < ipvs:
            add("error", "ordering", f"conntrack established timeout {est:g} s < IPVS tcp timeout {ipvs:g} s: "
                "conntrack forgets flows IPVS still holds (timeout mismatch)", est, ipvs)
        if ka is not None:
            for val, what in ((ipvs, "IPVS tcp timeout"), (est, "conntrack established timeout")):
                if val is None:
                    continue
                if ka == val:
                    add("warning", "no_margin", f"tcp_keepalive_time {ka:g} s = {what} {val:g} s leaves no "
                        "margin: the first probe races the expiry; keep keepalive well below it", ka, val)
                elif ka > val:
                    add("error", "ordering", f"tcp_keepalive_time {ka:g} s > {what} {val:g} s: idle flows "
                        "are forgotten before the first keepalive probe", ka, val)
            for label, val in (idle_timeouts or {}).items():
                if ka >= val:
                    add("warning", "idle_timeout", f"tcp_keepalive_time {ka:g} s >= {label} idle timeout "
                        f"{val:g} s (sockets with SO_KEEPALIVE still lose idle flows there)", ka, val)
        ct = n.get("ct") or {}
        count, mx, buckets = ct.get("count"), ct.get("max"), ct.get("buckets")
        if isinstance(count, int) and isinstance(mx, int) and mx > 0:
            if count >= FULL * mx:
                add("error", "ct_full", f"conntrack {count}/{mx} entries ({count / mx:.0%}): "
                    "the table is full, new connections are dropped", count, mx)
            elif count >= NEAR_FULL * mx:
                add("warning", "ct_near_full", f"conntrack {count}/{mx} entries ({count / mx:.0%})", count, mx)
        if isinstance(buckets, int) and isinstance(mx, int) and buckets * 4 < mx:
            add("warning", "buckets", f"nf_conntrack_buckets {buckets} < max/4 ({mx // 4}): "
                "long hash chains", buckets, mx)
    return out
