"""The live table of resets, newest first.

A Line API widget drawing straight from `LiveState.view`: each refresh
renders only the visible lines from precomputed cells, so its cost is the
screen's height, not the number of resets seen (a DataTable would
re-index every row on each insert at the top and each trim).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from rsttrace.schema.catalog import RESET
from rsttrace.tui.rows import Row, cause_style
from rsttrace.tui.state import LiveState


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    width: int  # 0: shares what is left
    min_total: int = 0  # shown only when the table is at least this wide


def _field(field: str, key: str, width: int, min_total: int = 0) -> Column:
    """A column that shows one field of the reset: titled with the field
    catalog's label for it (rsttrace.schema.catalog)."""
    label = RESET[field].label
    assert label, f"the catalog gives {field} no label"
    return Column(key, label, width, min_total)


COLUMNS = (
    _field("t", "time", 8),
    _field("netns", "netns", 8),
    Column("process", "PROCESS", 12),
    Column("flow", "FLOW (RST src→dst)", 0),
    _field("state", "state", 11, min_total=90),
    _field("idle_ms", "idle", 5),
    Column("cause", "CAUSE", 14),
    Column("evidence", "EVIDENCE", 0, min_total=120),
)


def layout(width: int) -> list[tuple[Column, int]]:
    cols = [c for c in COLUMNS if width >= c.min_total]
    fixed = sum(c.width for c in cols) + len(cols) - 1
    flex = [c for c in cols if c.width == 0]
    spare = max(len(flex) * 8, width - fixed)
    out = []
    for i, c in enumerate(cols):
        w = c.width or (spare // len(flex) + (spare % len(flex) if c is flex[-1] else 0))
        out.append((c, w))
    return out


class ResetTable(Widget, can_focus=True):
    DEFAULT_CSS = """
    ResetTable { height: 1fr; min-height: 4; }
    """
    BINDINGS = [
        Binding("up,k", "move(-1)", "up", show=False),
        Binding("down,j", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "home", "newest", show=False),
        Binding("end", "end", show=False),
    ]

    class Selected(Message):
        def __init__(self, row: Row | None) -> None:
            super().__init__()
            self.row = row

    def __init__(self, state: LiveState, **kw) -> None:
        super().__init__(**kw)
        self.state = state
        self.cursor = 0
        self.top = 0
        self.follow = True  # cursor rides on the newest row until the user moves
        self._selected_seq: int | None = None
        self._n_seen = 0

    # -- state → view ------------------------------------------------------
    @property
    def selected(self) -> Row | None:
        return self.state.row_at(self.cursor)

    def sync(self) -> None:
        """Called after the state changed: keeps the selection on the same
        reset (or on the newest one when following) and redraws."""
        n = len(self.state.view)
        if self.follow or self._selected_seq is None:
            self.cursor = 0
        else:
            idx = self.state.index_of(self._selected_seq)
            self.cursor = idx if idx is not None else min(self.cursor, max(0, n - 1))
        self._clamp()
        self._announce()
        self.refresh()

    def _rows_visible(self) -> int:
        return max(1, self.size.height - 1)

    def _clamp(self) -> None:
        n = len(self.state.view)
        self.cursor = max(0, min(self.cursor, n - 1)) if n else 0
        vis = self._rows_visible()
        if self.cursor < self.top:
            self.top = self.cursor
        elif self.cursor >= self.top + vis:
            self.top = self.cursor - vis + 1
        self.top = max(0, min(self.top, max(0, n - vis)))

    def _announce(self) -> None:
        row = self.selected
        seq = row.seq if row else None
        if seq != self._selected_seq:
            self._selected_seq = seq
            self.post_message(self.Selected(row))

    # -- actions -----------------------------------------------------------
    def _moved(self) -> None:
        self.follow = self.cursor == 0
        self._clamp()
        self._announce()
        self.refresh()

    def action_move(self, delta: int) -> None:
        self.cursor += delta
        self._moved()

    def action_page(self, delta: int) -> None:
        self.cursor += delta * self._rows_visible()
        self._moved()

    def action_home(self) -> None:
        self.cursor = 0
        self._moved()

    def action_end(self) -> None:
        self.cursor = len(self.state.view) - 1
        self._moved()

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            idx = self.top + event.y - 1
            if idx < len(self.state.view):
                self.cursor = idx
                self._moved()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        self.action_move(3)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self.action_move(-3)

    def on_resize(self) -> None:
        self._clamp()

    # -- drawing -----------------------------------------------------------
    def _cells(self, row: Row, cols: list[tuple[Column, int]]) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        for i, (c, w) in enumerate(cols):
            if i:
                t.append(" ")
            value = getattr(row, c.key)
            style = cause_style(row.cause) if c.key == "cause" else ""
            # Host strings go in as plain text (Text.append never parses markup).
            cell = Text(value, style=style, no_wrap=True, overflow="ellipsis")
            cell.truncate(w, overflow="ellipsis", pad=True)
            t.append_text(cell)
        return t

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        cols = layout(width)
        if y == 0:
            head = Text(no_wrap=True)
            for i, (c, w) in enumerate(cols):
                if i:
                    head.append(" ")
                head.append(c.title[:w].ljust(w), style="bold")
            n = len(self.state.view)
            pos = f" {self.cursor + 1 if n else 0}/{n}"
            head.truncate(max(0, width - len(pos)), pad=True)
            head.append(pos, style="dim")
            return self._strip(head, width, Style(reverse=False, underline=True))
        idx = self.top + y - 1
        row = self.state.row_at(idx)
        if row is None:
            if idx == 0 and not self.state.view:
                msg = "waiting for resets…" if not (self.state.filter or self.state.cause_filter) \
                    else "no reset matches the filter (/ to change, c to cycle causes)"
                return self._strip(Text(msg, style="dim"), width)
            return Strip.blank(width)
        text = self._cells(row, cols)
        if idx == self.cursor:
            style = Style(reverse=True, bold=self.has_focus)
            return self._strip(text, width, style)
        return self._strip(text, width)

    def _strip(self, text: Text, width: int, extra: Style | None = None) -> Strip:
        segments = list(text.render(self.app.console))
        segments = [s for s in segments if s.text != "\n"]
        strip = Strip(segments).adjust_cell_length(width)
        if extra is not None:
            strip = Strip(Segment.apply_style(strip, post_style=extra), strip.cell_length)
        return strip
