"""Modal screens: help, filter entry, and the fix plan (dry run first;
applying asks for an explicit confirmation)."""

from __future__ import annotations

import textwrap
from typing import Any, Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from rsttrace.analysis.vocab import CAUSES
from rsttrace.tui.rows import Row, _fix_text, cause_style, plain

_HELP = """\
rsttrace live: every TCP reset with its cause and fix, as it happens

  ↑ ↓ PgUp PgDn   select a reset (Home: back to the newest, following)
  p               pause / resume the table (events keep being counted)
  /               filter: port:3306 cause:keep netns:lb addr:10.0.0.2
                  (bare words: 3306, 10.0.0.2, or part of a cause/netns/process)
  c               cycle the cause filter through the causes seen
  e               export the resets in memory to CSV (columns of `rsttrace report`)
  f               fix plan for the selected reset's cause (dry run; apply asks first):
                  one value per setting, the one every incident seen so far needs
  ?               this help
  q               quit (tracing detached, recording completed)

causes: {causes}
"""
HELP = _HELP.format(causes=textwrap.fill(" ".join(CAUSES), width=72, subsequent_indent=" " * 8))


class _Modal(ModalScreen[Any]):
    DEFAULT_CSS = """
    _Modal { align: center middle; }
    _Modal > Vertical {
        width: 90%; max-width: 110; height: auto; max-height: 90%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    _Modal VerticalScroll { height: auto; max-height: 30; }
    _Modal .hint { color: $text-muted; }
    """
    BINDINGS = [Binding("escape,q", "dismiss_none", "close")]

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class HelpScreen(_Modal):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss_none", "close")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(HELP))
            yield Static("esc closes", classes="hint")


class FilterScreen(_Modal):
    """Returns the filter text typed (empty clears), None when cancelled."""
    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, current: str, validate: Callable[[str], str | None]) -> None:
        super().__init__()
        self.current = current
        self.validate = validate  # returns an error message, or None when valid

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("filter resets (empty clears): port:3306 cause:keep netns:lb addr:10.0.0.2")
            yield Input(value=self.current, placeholder="port:3306 cause:conntrack", id="filter-input")
            yield Static("", id="filter-error", classes="hint")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        err = self.validate(event.value)
        if err:
            self.query_one("#filter-error", Static).update(Text(err, style="bold red"))
            return
        self.dismiss(event.value)


class ConfirmScreen(_Modal):
    """Apply only on an explicit `y`; anything else cancels."""
    BINDINGS = [Binding("y", "yes", "apply"), Binding("n,escape,q", "dismiss_none", "cancel")]

    def __init__(self, question: Text) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            yield Static("y applies, n or esc cancels", classes="hint")

    def action_yes(self) -> None:
        self.dismiss(True)


def plan_text(row: Row, fixes: list[Any] | None = None) -> Text:
    """The plan for the selected reset; `fixes`: its settings merged over
    every incident seen (one value each), else the reset's own."""
    v = row.verdict
    fixes = list(v.fixes) if fixes is None else fixes
    t = Text()
    t.append("fix plan (dry run: nothing is changed) for ", style="bold")
    t.append_text(plain(row.cause, cause_style(row.cause) + " bold"))
    t.append("\n")
    t.append_text(plain(f"{row.time}  {row.flow}  netns {row.netns}", "dim"))
    t.append("\n\n")
    if not fixes:
        t.append("No configuration change fixes this cause; the evidence in the detail "
                 "pane says what to look at.\n", style="dim")
    for fx in fixes:
        _fix_text(fx, t)
    t.rstrip()
    return t


class FixPlanScreen(_Modal):
    """Shows the selected reset's fixes; `a` asks to apply them through the
    remedy engine when it is available, otherwise only the commands are shown."""
    BINDINGS = [Binding("escape,q,f", "dismiss_none", "close"), Binding("a", "apply", "apply…")]

    def __init__(self, row: Row, can_apply: str | None, fixes: list[Any] | None = None) -> None:
        super().__init__()
        self.row = row
        self.can_apply = can_apply  # None when applying works, else why not
        self.fixes = list(row.verdict.fixes) if fixes is None else fixes

    def compose(self) -> ComposeResult:
        fixes = self.fixes
        with Vertical():
            with VerticalScroll():
                yield Static(plan_text(self.row, fixes), id="plan")
            if not fixes:
                hint = "esc closes"
            elif self.can_apply is None:
                hint = "a applies this plan (asks to confirm first) · esc closes"
            else:
                hint = f"applying from here is not available ({self.can_apply}); run the commands above · esc closes"
            yield Static(plain(hint), classes="hint", id="plan-hint")

    def action_apply(self) -> None:
        fixes = self.fixes
        if not fixes or self.can_apply is not None:
            self.notify("nothing to apply from here: run the commands shown", severity="warning")
            return
        q = Text()
        q.append(f"Apply {len(fixes)} change(s) for ", style="bold")
        q.append_text(plain(self.row.cause, "bold"))
        q.append("?\n")
        for fx in fixes:
            q.append("  $ ")
            q.append_text(plain(fx.command or fx.key, "green"))
            q.append("\n")

        def done(answer: Any) -> None:
            if answer is True:
                self.dismiss("apply")

        self.app.push_screen(ConfirmScreen(q), done)
