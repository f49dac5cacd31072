"""Panels around the table: header, per-cause counters with the reset-rate
chart, conntrack gauges and timeouts per namespace, and the detail pane.

Each panel renders from `LiveState` in time bounded by the number of
causes and namespaces, never by the number of events.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Sparkline, Static

from rsttrace.analysis.vocab import TIMEOUT_FINDINGS, Severity
from rsttrace.tui.rows import NetnsNames, Row, cause_style, detail_text, plain
from rsttrace.tui.state import LiveState, NsContext


def _n(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    v = int(v)
    if v >= 10_000_000:
        return f"{v / 1_000_000:.0f}M"
    if v >= 100_000:
        return f"{v / 1000:.0f}k"
    return str(v)


def plan_summary(header: dict[str, Any]) -> Text:
    """Signals of the attach plan, missing ones shown (with why) not hidden."""
    plan = header.get("plan") or {}
    out = Text()
    if not plan:
        out.append("attach plan unknown", style="dim")
        return out
    missing = []
    for i, (sig, p) in enumerate(sorted(plan.items())):
        ok = bool(isinstance(p, dict) and p.get("available"))
        if i:
            out.append(" ")
        out.append(plain(sig, "green" if ok else "red strike"))
        out.append("✓" if ok else "✗", style="green" if ok else "bold red")
        if not ok:
            missing.append(f"{sig}: {p.get('why') if isinstance(p, dict) else '?'}")
    if missing:
        out.append_text(plain("  (" + "; ".join(missing) + ")", "dim"))
    return out


class StatusHeader(Widget):
    DEFAULT_CSS = """
    StatusHeader { height: 2; background: $panel; color: $text; padding: 0 1; }
    """

    def __init__(self, state: LiveState, header: dict[str, Any], source_label: str, **kw) -> None:
        super().__init__(**kw)
        self.state = state
        self.header = header
        self.source_label = source_label

    def render(self) -> Text:
        s = self.state
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("rsttrace ", style="bold")
        line.append(plain(self.header.get("host") or "?", "bold"))
        # Counts first: on 80 columns the end of the line is cut, never the
        # lost-events figure.
        line.append("  ev/s ", style="dim")
        line.append(_n(s.events_per_s()), style="bold")
        line.append("  events ", style="dim")
        line.append(_n(s.events))
        line.append("  lost ", style="dim")
        line.append(_n(s.lost), style="bold red" if s.lost else "green")
        if s.invalid:   # a replayed recording's lines that did not validate (skipped)
            line.append("  invalid ", style="dim")
            line.append(_n(s.invalid), style="bold red")
        line.append("  resets ", style="dim")
        line.append(_n(s.total), style="bold")
        if s.paused:
            line.append(f"  PAUSED +{len(s.pending)}", style="bold black on yellow")
        if s.error:
            line.append("  ERROR ", style="bold white on red")
            line.append(plain(s.error, "red"))
        line.append("  kernel ", style="dim")
        line.append(plain(self.header.get("kernel") or "?"))
        line.append("  ")
        line.append(plain(self.source_label, "dim"))
        line2 = Text(no_wrap=True, overflow="ellipsis")
        line2.append("signals ", style="dim")
        line2.append_text(plan_summary(self.header))
        filt = []
        if s.filter:
            filt.append(f"filter '{s.filter.text}'")
        if s.cause_filter:
            filt.append(f"cause {s.cause_filter}")
        if filt:
            line2.append("  │ ", style="dim")
            line2.append(plain(", ".join(filt), "bold cyan"))
        out = Text("\n", no_wrap=True, overflow="ellipsis").join([line, line2])
        out.no_wrap, out.overflow = True, "ellipsis"
        return out


class CausePanel(Vertical):
    """Counters per cause and the reset rate over the last minutes."""
    DEFAULT_CSS = """
    CausePanel { height: auto; }
    CausePanel > #counts { height: auto; }
    CausePanel > Sparkline { height: 2; margin: 0 0; }
    CausePanel > #rate-label { height: 1; color: $text-muted; }
    """

    def __init__(self, state: LiveState, **kw) -> None:
        super().__init__(**kw)
        self.state = state
        # Held by reference: a batch may be drawn before these are mounted.
        self._counts = Static(id="counts")
        self._label = Static(id="rate-label")
        self._rate = Sparkline([0.0], summary_function=max, id="rate")

    def compose(self) -> ComposeResult:
        yield self._counts
        yield self._label
        yield self._rate

    def update_from_state(self) -> None:
        s = self.state
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("resets by cause\n", style="bold underline")
        if not s.counts:
            t.append("none yet", style="dim")
        for i, (cause, n) in enumerate(sorted(s.counts.items(), key=lambda kv: (-kv[1], kv[0]))):
            if i:
                t.append("\n")
            mark = "▶" if cause == s.cause_filter else " "
            t.append(f"{mark}{_n(n):>6} ", style="bold")
            t.append(plain(cause, cause_style(cause)))
        self._counts.update(t)
        series = s.resets.series(s.now)
        peak = max(series) if series else 0
        self._label.update(
            Text(f"resets/s, last {len(series) // 60} min (peak {int(peak)})", style="dim"))
        self._rate.data = series or [0.0]


def gauge(fraction: float, width: int) -> Text:
    width = max(1, width)
    filled = max(0, min(width, round(fraction * width)))
    style = "red" if fraction >= 0.9 else "yellow" if fraction >= 0.7 else "green"
    t = Text("█" * filled, style=style)
    t.append("░" * (width - filled), style="dim")
    return t


def _ct_line(ns: NsContext, width: int) -> Text:
    ct = ns.ct or {}
    count, mx = ct.get("count"), ct.get("max")
    frac = (count / mx) if isinstance(count, (int, float)) and isinstance(mx, (int, float)) and mx else 0.0
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append_text(plain(ns.name[:8].ljust(8), "bold"))
    t.append(" ")
    t.append_text(gauge(frac, 8 if width < 60 else 14))
    t.append(f" {_n(count)}/{_n(mx)}")
    for label, key in (("drop", "drop"), ("early", "early_drop"), ("inv", "invalid")):
        rise = ns.rise(key)
        t.append(f" {label} ", style="dim")
        t.append(_n(ct.get(key)), style="bold red" if rise else "")
        if rise:
            t.append(f"+{_n(rise)}", style="red")
    if ns.ct_full_events:
        t.append(f" FULL×{_n(ns.ct_full_events)}", style="bold red")
    return t


class ConntrackPanel(Static):
    def __init__(self, state: LiveState, **kw) -> None:
        super().__init__(**kw)
        self.state = state

    def update_from_state(self) -> None:
        width = self.size.width or 80
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("conntrack (count/max, drops, early drops, invalid)", style="bold underline")
        shown = [ns for ns in self.state.namespaces.values() if ns.ct]
        if not shown:
            t.append("\nno conntrack context yet", style="dim")
        for ns in sorted(shown, key=lambda n: n.name):
            t.append("\n")
            t.append_text(_ct_line(ns, width))
        if self.state.ct_full_unknown:
            t.append(f"\n'table full' lines without a netns: {self.state.ct_full_unknown}", style="red")
        self.update(t)


class TimeoutsPanel(Static):
    """keepalive < IPVS tcp timeout <= conntrack established, per namespace.
    The analysis' audit (run by a worker, kept in the state) decides what is
    a break; this only shows it."""

    def __init__(self, state: LiveState, **kw) -> None:
        super().__init__(**kw)
        self.state = state

    def update_from_state(self) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("timeouts s (keepalive < ipvs tcp ≤ ct established)", style="bold underline")
        rows = [ns for ns in self.state.namespaces.values() if ns.raw and (ns.sysctl or ns.ipvs)]
        if not rows:
            t.append("\nno timeout context yet", style="dim")
        findings = [f for f in self.state.findings if f.key in TIMEOUT_FINDINGS]
        errors = {f.netns for f in findings if f.severity is Severity.ERROR}
        warned = {f.netns for f in findings}
        # Broken namespaces first: at 80x24 only the first lines are visible.
        for ns in sorted(rows, key=lambda n: (n.netns not in errors, n.netns not in warned, n.name)):
            bad, mine = ns.netns in errors, ns.netns in warned
            style = "bold red" if bad else "yellow" if mine else ""
            ka = ns.sysctl.get("tcp_keepalive_time")
            ct = ns.sysctl.get("nf_conntrack_tcp_timeout_established")
            ipvs = (ns.ipvs or {}).get("tcp")
            t.append("\n")
            t.append_text(plain(ns.name[:8].ljust(8), "bold"))
            t.append(f" ka {_n(ka):>5} ipvs {_n(ipvs):>5} ct {_n(ct):>6}", style=style)
            t.append("  ✗ broken" if bad else "  ! no margin" if mine else "  ok",
                     style=style or "green")
        for f in findings:
            t.append("\n")
            t.append_text(plain(f.message, "red" if f.severity is Severity.ERROR else "yellow"))
        self.update(t)


class DetailPane(VerticalScroll):
    DEFAULT_CSS = """
    DetailPane { height: 8; border-top: solid $primary; }
    DetailPane > Static { width: 100%; }
    """

    def __init__(self, names: NetnsNames, **kw) -> None:
        super().__init__(**kw)
        self.names = names
        self.row: Row | None = None
        self._text = Static(detail_text(None, self.names), id="detail")

    def compose(self) -> ComposeResult:
        yield self._text

    def show(self, row: Row | None) -> None:
        self.row = row
        self._text.update(detail_text(row, self.names))
        self.scroll_home(animate=False)
