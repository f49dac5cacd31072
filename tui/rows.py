"""Turns a Verdict into what the screen shows: a table row and a detail text.

Every string that comes from the host (process, pod/netns names, addresses,
evidence quoting kernel text) is put into `rich.text.Text` as plain text,
never parsed as markup: a process named `[b red]x[/]` shows those characters.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone, tzinfo
from typing import Any

from rich.text import Text

from rsttrace.analysis.classify import Verdict
from rsttrace.analysis.fixes import Fix
from rsttrace.analysis.safe import printable
from rsttrace.schema.catalog import RESET

# The reset fields the table shows (tui/table.py titles their columns with
# the catalog's labels): named through the catalog, so a field renamed
# there fails here at import instead of showing "-" in every row.
_STATE, _IDLE_MS, _COMM, _PID = (RESET[k].name for k in ("state", "idle_ms", "comm", "pid"))
assert RESET[_IDLE_MS].unit == "ms"     # fmt_idle takes milliseconds
from rsttrace.analysis.vocab import Cause

# Colours for the classifier's causes; a cause not listed (one added to
# analysis/vocab.py without a colour here) gets a stable colour from its name.
CAUSE_COLOURS: dict[Cause, str] = {
    Cause.CONNTRACK_FULL: "bold red",
    Cause.CONNTRACK_INVALID: "bright_red",
    Cause.TIMEOUT_MISMATCH: "magenta",
    Cause.KEEPALIVE: "yellow",
    Cause.NO_LISTENER: "cyan",
    Cause.PEER_RESET: "green",
    Cause.PEER_CLOSED: "spring_green2",
    Cause.FIREWALL_REJECT: "dark_orange",
    Cause.UNKNOWN: "bright_black",
}
_PALETTE = ("blue", "bright_blue", "bright_cyan", "bright_green", "bright_yellow", "orange3")


def cause_style(cause: str) -> str:
    style = CAUSE_COLOURS.get(cause)   # type: ignore[call-overload]
    return style if style is not None else _PALETTE[zlib.crc32(cause.encode()) % len(_PALETTE)]


def clean(value: Any) -> str:
    """Host text with control characters made visible (an escape sequence in
    a process name must not drive the terminal): the one sanitiser."""
    return "" if value is None else printable(value)


def plain(value: Any, style: str = "") -> Text:
    """Host text as a Text, never markup."""
    return Text(clean(value), style=style)


def evidence_lines(evidence: str) -> list[str]:
    """The classifier's evidence, one fact a line."""
    return [ln for ln in evidence.splitlines() if ln.strip()]


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
    cause: Cause
    time: str
    netns: str
    process: str
    flow: str
    state: str
    idle: str
    evidence: str
    verdict: Verdict = field(compare=False, repr=False)
    ports: frozenset[int] = field(default_factory=frozenset)
    addrs: frozenset[str] = field(default_factory=frozenset)
    netns_keys: frozenset[str] = field(default_factory=frozenset)
    # a storm's row (storm mode's reset_agg records): the incidents it stands
    # for, summed over the verdicts folded into it, and those verdicts
    count: int = 1
    merged: tuple[Verdict, ...] = field(default=(), compare=False, repr=False)

    @property
    def storm_key(self) -> tuple:
        """What a storm's later counts share with its row: they update it
        in place instead of adding a row a second."""
        v = self.verdict
        return (v.cause, v.src, v.sport, v.dst, v.dport, v.sender_netns, v.receiver_netns)


# verdicts a storm's row keeps for the screen's export (the oldest go first)
STORM_MERGED_MAX = 255


def fold_storm(old: Row, new: Row) -> Row:
    """`new`, a storm's latest counts, folded into its row `old`: the row
    keeps its place (seq) and shows the counts summed."""
    count = old.count + new.count
    merged = (old.merged + (old.verdict,))[-STORM_MERGED_MAX:]
    return replace(new, seq=old.seq, count=count, merged=merged, flow=_flow(new.verdict, count))


def _flow(v: Verdict, count: int) -> str:
    flow = clean(f"{fmt_addr(v.src, v.sport)}→{fmt_addr(v.dst, v.dport)}")
    # a storm's row says how many it stands for, in the column every width shows
    return f"{count:,}× {flow}" if count > 1 else flow


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


def make_row(seq: int, v: Verdict, names: NetnsNames, tz: tzinfo | None = timezone.utc) -> Row:
    events = v.events
    recv_ns, send_ns = v.receiver_netns, v.sender_netns
    where = recv_ns if recv_ns is not None else send_ns
    comm, pid = _pick(events, _COMM), _pick(events, _PID)
    process = f"{comm}[{pid}]" if comm and pid else (comm or (f"pid {pid}" if pid else "-"))
    src, sport, dst, dport = v.src, v.sport, v.dst, v.dport
    ev = evidence_lines(v.evidence)
    ports = frozenset(p for p in (sport, dport) if isinstance(p, int))
    addrs = frozenset(str(a) for a in (src, dst) if a)
    ns_keys = frozenset(s for n in (recv_ns, send_ns) if n is not None
                        for s in (str(n), names.name(n)))
    return Row(
        seq=seq, t=v.t, cause=v.cause, time=fmt_time(v.t, tz), netns=clean(names.name(where)), process=clean(process),
        flow=_flow(v, v.count),
        state=clean(_pick(events, _STATE) or "-"), idle=fmt_idle(_pick(events, _IDLE_MS)),
        evidence=clean(ev[0] if ev else ""), ports=ports, addrs=addrs, netns_keys=ns_keys, verdict=v,
        count=v.count,
    )


def _fix_text(fix: Fix, out: Text) -> None:
    ns = fix.netns_name or fix.netns
    head = f"{fix.key}: {fix.current!s} → {fix.value!s}"
    out.append("  • ", style="bold")
    out.append(plain(head, "bold"))
    out.append(plain(f"  ({fix.scope}{' ' + str(ns) if ns is not None else ''})", "dim"))
    out.append("\n")
    if fix.reason:
        out.append("    why: ", style="dim")
        out.append(plain(fix.reason))
        out.append("\n")
    if fix.tradeoff:
        out.append("    trade-off: ", style="yellow")
        out.append(plain("weigh it before applying", "yellow"))
        out.append("\n")
    if fix.command:
        out.append("    $ ", style="dim")
        out.append(plain(fix.command, "bold green"))
        out.append("\n")
    if fix.snippet:
        for ln in fix.snippet.splitlines():
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
    out.append(plain(f"  confidence {v.confidence}", "dim"))
    out.append("\n")
    out.append(plain(f"incident #{v.incident}", "dim"))
    out.append("\n")
    send_ns, recv_ns = v.sender_netns, v.receiver_netns
    out.append("sent by  ", style="dim")
    out.append(plain(fmt_addr(v.src, v.sport)))
    out.append(plain(f"  in netns {names.name(send_ns)}" if send_ns is not None else "  (remote)", "dim"))
    out.append("\nreset    ", style="dim")
    out.append(plain(fmt_addr(v.dst, v.dport)))
    out.append(plain(f"  in netns {names.name(recv_ns)}" if recv_ns is not None else "  (remote)", "dim"))
    out.append(plain(f"  {row.process}  state {row.state}  idle {row.idle}", "dim"))
    out.append("\n")
    ev = evidence_lines(v.evidence)
    if ev:
        out.append("evidence\n", style="bold underline")
        for ln in ev:
            out.append("  • ")
            out.append(plain(ln))
            out.append("\n")
    out.append("fix\n", style="bold underline")
    if not v.fixes:
        out.append("  no configuration change fixes this cause\n", style="dim")
    for fx in v.fixes:
        _fix_text(fx, out)
    out.rstrip()
    return out
