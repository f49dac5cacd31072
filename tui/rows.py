"""Turns a Verdict into what the screen shows: a table row and a detail text.

Every string that comes from the host (process, pod/netns names, addresses,
evidence quoting kernel text) is put into `rich.text.Text` as plain text,
never parsed as markup: a process named `[b red]x[/]` shows those characters.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any, Iterable

from rich.text import Text

from rsttrace.analysis.safe import printable

# Colours for the causes the classifier names; a cause not listed gets a
# stable colour from its name so new causes still stand apart.
CAUSE_COLOURS: dict[str, str] = {
    "conntrack_full": "bold red",
    "timeout_mismatch": "magenta",
    "ipvs_idle_expiry": "magenta",
    "keepalive": "yellow",
    "idle_timeout": "yellow",
    "conntrack_invalid": "bright_red",
    "ipvs_nodest": "bright_magenta",
    "no_listener": "cyan",
    "peer_reset": "green",
    "peer_closed": "spring_green2",
    "firewall_reject": "dark_orange",
    "unknown": "bright_black",
}
_PALETTE = ("blue", "bright_blue", "bright_cyan", "bright_green", "bright_yellow", "orange3")


def cause_style(cause: str) -> str:
    for key, style in CAUSE_COLOURS.items():
        if cause == key or cause.startswith(key):
            return style
    return _PALETTE[zlib.crc32(cause.encode()) % len(_PALETTE)]


def clean(value: Any) -> str:
    """Host text with control characters made visible (an escape sequence in
    a process name must not drive the terminal): the one sanitiser."""
    return "" if value is None else printable(value)


def plain(value: Any, style: str = "") -> Text:
    """Host text as a Text, never markup."""
    return Text(clean(value), style=style)


def evidence_lines(evidence: Any) -> list[str]:
    """The classifier's evidence as lines, whatever shape it comes in."""
    if evidence is None:
        return []
    if isinstance(evidence, str):
        return [ln for ln in evidence.splitlines() if ln.strip()]
    if isinstance(evidence, dict):
        return [f"{k}: {v}" for k, v in evidence.items()]
    if isinstance(evidence, Iterable):
        out: list[str] = []
        for item in evidence:
            out.extend(evidence_lines(item) if not isinstance(item, str) else [item])
        return out
    return [str(evidence)]


def fmt_time(t: float | None, tz: tzinfo | None) -> str:
    if not isinstance(t, (int, float)):
        return "--:--:--"
    return datetime.fromtimestamp(t, tz or None).strftime("%H:%M:%S")


def fmt_idle(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    s = ms / 1000.0
    if s < 10:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s:.0f}s"
    return f"{s / 3600:.1f}h"


def fmt_addr(addr: Any, port: Any) -> str:
    a = "?" if addr is None else str(addr)
    if ":" in a:  # IPv6: brackets keep the port readable
        a = f"[{a}]"
    return f"{a}:{port}" if port is not None else a


def _pick(events: list[dict[str, Any]], key: str, prefer: str = "recv") -> Any:
    """A field from the incident's reset events, the `prefer` direction first
    (the socket that received the reset knows the process and idle time)."""
    ordered = sorted(events, key=lambda e: e.get("dir") != prefer)
    for e in ordered:
        v = e.get(key)
        if v not in (None, ""):
            return v
    return None


@dataclass(frozen=True)
class Row:
    """One reset incident as the table shows it; cells are precomputed so
    drawing a line costs the same however many resets were seen."""
    seq: int
    t: float
    cause: str
    time: str
    netns: str
    process: str
    flow: str
    state: str
    idle: str
    evidence: str
    ports: frozenset[int] = field(default_factory=frozenset)
    addrs: frozenset[str] = field(default_factory=frozenset)
    netns_keys: frozenset[str] = field(default_factory=frozenset)
    verdict: Any = field(default=None, compare=False, repr=False)


class NetnsNames:
    """inode → display name, from the recording header and ctx records."""

    def __init__(self, names: dict[Any, str] | None = None):
        self._names: dict[int, str] = {}
        self.update(names or {})

    def update(self, names: dict[Any, str]) -> None:
        for k, v in names.items():
            try:
                self._names[int(k)] = str(v)
            except (TypeError, ValueError):
                continue

    def name(self, inode: Any) -> str:
        if inode is None:
            return "?"
        try:
            return self._names.get(int(inode), str(inode))
        except (TypeError, ValueError):
            return str(inode)

    def snapshot(self) -> dict[int, str]:
        return dict(self._names)


def make_row(seq: int, v: Any, names: NetnsNames, tz: tzinfo | None = timezone.utc) -> Row:
    events: list[dict[str, Any]] = list(getattr(v, "events", None) or [])
    recv_ns = getattr(v, "receiver_netns", None)
    send_ns = getattr(v, "sender_netns", None)
    where = recv_ns if recv_ns is not None else send_ns
    comm, pid = _pick(events, "comm"), _pick(events, "pid")
    process = f"{comm}[{pid}]" if comm and pid else (comm or (f"pid {pid}" if pid else "-"))
    src, sport = getattr(v, "src", None), getattr(v, "sport", None)
    dst, dport = getattr(v, "dst", None), getattr(v, "dport", None)
    ev = evidence_lines(getattr(v, "evidence", None))
    cause = str(getattr(v, "cause", "unknown") or "unknown")
    ports = frozenset(p for p in (sport, dport) if isinstance(p, int))
    addrs = frozenset(str(a) for a in (src, dst) if a)
    ns_keys = frozenset(s for n in (recv_ns, send_ns) if n is not None
                        for s in (str(n), names.name(n)))
    t = getattr(v, "t", None)
    return Row(
        seq=seq, t=float(t) if isinstance(t, (int, float)) else 0.0, cause=cause,
        time=fmt_time(t, tz), netns=clean(names.name(where)), process=clean(process),
        flow=clean(f"{fmt_addr(src, sport)}→{fmt_addr(dst, dport)}"),
        state=clean(_pick(events, "state") or "-"), idle=fmt_idle(_pick(events, "idle_ms")),
        evidence=clean(ev[0] if ev else ""), ports=ports, addrs=addrs, netns_keys=ns_keys, verdict=v,
    )


def _fix_text(fix: Any, out: Text) -> None:
    scope = getattr(fix, "scope", "") or ""
    ns = getattr(fix, "netns_name", None) or getattr(fix, "netns", None)
    key = getattr(fix, "key", "") or ""
    head = f"{key}: {getattr(fix, 'current', None)!s} → {getattr(fix, 'value', None)!s}" if key else "fix"
    out.append("  • ", style="bold")
    out.append(plain(head, "bold"))
    out.append(plain(f"  ({scope}{' ' + str(ns) if ns is not None else ''})", "dim"))
    out.append("\n")
    reason = getattr(fix, "reason", None)
    if reason:
        out.append("    why: ", style="dim")
        out.append(plain(reason))
        out.append("\n")
    tradeoff = getattr(fix, "tradeoff", None)
    if tradeoff:
        # A bool in the analysis' Fix (a change with a cost to weigh); a text elsewhere.
        out.append("    trade-off: ", style="yellow")
        out.append(plain("weigh it before applying" if tradeoff is True else tradeoff, "yellow"))
        out.append("\n")
    cmd = getattr(fix, "command", None)
    if cmd:
        out.append("    $ ", style="dim")
        out.append(plain(cmd, "bold green"))
        out.append("\n")
    snippet = getattr(fix, "snippet", None)
    if snippet:
        for ln in str(snippet).splitlines():
            out.append("    │ ", style="dim")
            out.append(plain(ln, "green"))
            out.append("\n")
    covers = getattr(fix, "covers", None)
    if covers and len(covers) > 1:
        # merged over several incidents: the one value satisfies each of these
        out.append("    covers:\n", style="dim")
        for c in covers:
            out.append("      ")
            out.append(plain(c, "dim"))
            out.append("\n")


def detail_text(row: Row | None, names: NetnsNames) -> Text:
    """The detail pane: who sent, who received, evidence, fixes."""
    if row is None:
        return Text("No reset selected. Resets appear here as they happen; "
                    "↑/↓ select one, f shows its fix plan.", style="dim")
    v = row.verdict
    out = Text()
    out.append(f"{row.time}  ", style="bold")
    out.append(plain(row.cause, cause_style(row.cause) + " bold"))
    conf = getattr(v, "confidence", None)
    if conf is not None:
        out.append(plain(f"  confidence {conf}", "dim"))
    out.append("\n")
    incident = getattr(v, "incident", None)
    if incident is not None:
        out.append(plain(f"incident #{incident}", "dim"))
        out.append("\n")
    send_ns, recv_ns = getattr(v, "sender_netns", None), getattr(v, "receiver_netns", None)
    out.append("sent by  ", style="dim")
    out.append(plain(fmt_addr(getattr(v, "src", None), getattr(v, "sport", None))))
    out.append(plain(f"  in netns {names.name(send_ns)}" if send_ns is not None else "  (remote)", "dim"))
    out.append("\nreset    ", style="dim")
    out.append(plain(fmt_addr(getattr(v, "dst", None), getattr(v, "dport", None))))
    out.append(plain(f"  in netns {names.name(recv_ns)}" if recv_ns is not None else "  (remote)", "dim"))
    out.append(plain(f"  {row.process}  state {row.state}  idle {row.idle}", "dim"))
    out.append("\n")
    ev = evidence_lines(getattr(v, "evidence", None))
    if ev:
        out.append("evidence\n", style="bold underline")
        for ln in ev:
            out.append("  • ")
            out.append(plain(ln))
            out.append("\n")
    fixes = list(getattr(v, "fixes", None) or [])
    out.append("fix\n", style="bold underline")
    if not fixes:
        out.append("  no configuration change fixes this cause\n", style="dim")
    for fx in fixes:
        _fix_text(fx, out)
    out.rstrip()
    return out
