"""The live incident screen.

Data flow: a thread worker runs `Feeder.step` (poll the source, classify,
record) and hands a `Batch` to the UI about every 100 ms, only once the
previous batch has been drawn; the UI folds it into `LiveState` and
refreshes the panels. The UI thread's work per batch is bounded by the
ring's capacity and the screen size, so keys stay responsive in a storm.

Everything else that may block runs in thread workers too (the config
audit of new context, the CSV export, applying a fix plan); a worker that
fails is reported by one handler, `on_worker_state_changed`.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any, Callable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer
from textual.worker import Worker, WorkerState, get_current_worker

from rsttrace.analysis.classify import Classifier, Verdict
from rsttrace.analysis.config import Finding, audit
from rsttrace.analysis.fixes import Fix
from rsttrace.analysis.safe import printable
from rsttrace.tui.feed import Feeder, Recorder, Source
from rsttrace.tui.panels import (CausePanel, ConntrackPanel, DetailPane, StatusHeader,
                                 TimeoutsPanel)
from rsttrace.tui.screens import FilterScreen, FixPlanScreen, HelpScreen
from rsttrace.tui.state import Batch, FilterError, FilterSpec, LiveState
from rsttrace.tui.table import ResetTable

BATCH_INTERVAL_S = 0.1
WIDE_MIN_COLS = 140


class BatchReady(Message):
    def __init__(self, batch: Batch) -> None:
        super().__init__()
        self.batch = batch


class WorkFailed(Exception):
    """A worker's failure in words for the user (what to do included)."""


# Applies a reset's fixes through the remedy engine (tui/apply.py), given
# the recording header and each namespace and cookie seen (so it acts on
# the namespace the fix was computed for, not one that took its inode).
Applier = Callable[[list[Fix], dict[str, Any], list[dict[str, Any]]], str]


class RstApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "rsttrace"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("p", "pause", "pause"),
        Binding("slash", "filter", "filter"),
        Binding("c", "cycle_cause", "cause"),
        Binding("e", "export", "export CSV"),
        Binding("f", "fix_plan", "fix plan"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit_clean", "quit"),
        Binding("ctrl+c", "quit_clean", "quit", show=False, priority=True),
    ]

    def __init__(self, source: Source, classifier: Classifier, *, capacity: int = 2000,
                 recorder: Recorder | None = None, tz: tzinfo | None = None,
                 export_dir: str | Path = ".", source_label: str = "live",
                 apply_fixes: Applier | None = None,
                 apply_unavailable: str | None = "no remedy engine",
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.source = source
        self.state = LiveState(capacity)
        self.feeder = Feeder(source, classifier, capacity, recorder=recorder, tz=tz, wall=wall)
        self.export_dir = Path(export_dir)
        self.source_label = source_label
        self.apply_fixes = apply_fixes
        self.apply_unavailable = None if apply_fixes else (apply_unavailable or "no remedy engine")
        self._wall = wall
        self._drawn = threading.Event()
        self._drawn.set()
        self._stop = threading.Event()
        self._worker_done = threading.Event()
        self._close_lock = threading.Lock()
        self._source_closed = False
        self.batches = 0  # batches drawn (tests and the benchmark wait on it)
        self.last_export: Path | None = None
        self.export_job: Worker[None] | None = None   # the latest export (tests wait on it)

    # -- layout ------------------------------------------------------------
    def compose(self) -> ComposeResult:
        # Widgets are kept by reference: `query_one` searches the active screen,
        # and a batch can arrive while a modal (help, filter, fix plan) is on top.
        self.w_header = StatusHeader(self.state, self.source.header, self.source_label, id="header")
        self.w_table = ResetTable(self.state, id="table")
        self.w_detail = DetailPane(self.feeder.names, id="detail-pane")
        self.w_causes = CausePanel(self.state, id="causes")
        self.w_conntrack = ConntrackPanel(self.state, id="conntrack")
        self.w_timeouts = TimeoutsPanel(self.state, id="timeouts")
        yield self.w_header
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield self.w_table
                yield self.w_detail
            with Horizontal(id="side"):
                yield self.w_causes
                with Vertical(id="ctx"):
                    yield self.w_conntrack
                    yield self.w_timeouts
        yield Footer()

    def on_mount(self) -> None:
        self._layout_for(self.size.width)
        self.w_table.focus()
        self._refresh_panels()
        self._feed_worker()
        # A service manager's SIGTERM or a dropped ssh session's SIGHUP ends
        # the screen as `q` does (tracing detached, a recording completed)
        # instead of killing it mid-write; the exit status says which signal.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                loop.add_signal_handler(sig, lambda s=sig: self.run_worker(self._quit_on(s)))
            except (NotImplementedError, RuntimeError, ValueError):
                pass    # not the main thread (tests run the app elsewhere)

    async def _quit_on(self, sig: int) -> None:
        await self.stop_source()
        self.exit(128 + sig)

    def on_resize(self, event: Any) -> None:
        self._layout_for(event.size.width)

    def _layout_for(self, width: int) -> None:
        # Wide terminals get a side column; 80 columns stack everything.
        # On the app, not self.screen: that may be a modal when the terminal resizes.
        self.set_class(width >= WIDE_MIN_COLS, "-wide")

    # -- worker --------------------------------------------------------------
    @work(thread=True, exclusive=True, name="feed", exit_on_error=False)
    def _feed_worker(self) -> None:
        last_post = 0.0
        try:
            # The source is started by whoever made it (a live session must
            # fail before the screen opens); a replay starts on its first poll.
            while not self._stop.is_set():
                try:
                    self.feeder.step(0.05)
                except Exception:
                    # a broken recording or a failed source: what came before
                    # it is drawn, the screen stays, the handler says why
                    self.feeder.done = True
                    self._drawn.clear()
                    self.post_message(BatchReady(self.feeder.take()))
                    raise
                now = time.monotonic()
                if self._drawn.is_set() and now - last_post >= BATCH_INTERVAL_S:
                    self._drawn.clear()
                    last_post = now
                    self.post_message(BatchReady(self.feeder.take()))
        finally:
            self._close_source()
            self._worker_done.set()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a worker's failure is reported."""
        if event.state is not WorkerState.ERROR:
            return
        err = event.worker.error
        text = str(err) if isinstance(err, WorkFailed) else f"{type(err).__name__}: {err}".splitlines()[0]
        if event.worker.name == "feed":
            self.state.error = text     # kept in the header: the source has stopped
            self.w_header.refresh()
        self.tell(f"{event.worker.name} failed: {text}", severity="error", timeout=10)

    def _close_source(self) -> None:
        with self._close_lock:
            if self._source_closed:
                return
            self._source_closed = True
        self.feeder.close()

    def shutdown(self) -> None:
        """Detaches tracing and completes the recording; idempotent, for the
        command to call after `run()` whatever ended the app."""
        self._stop.set()
        # Let the worker leave its poll first: the source is not stopped under it.
        self._worker_done.wait(timeout=2.0)
        self._close_source()

    @on(BatchReady)
    def _on_batch(self, message: BatchReady) -> None:
        try:
            self.state.apply(message.batch)
            self.w_table.sync()
            self._refresh_panels()
            if message.batch.ctx:
                self._audit(self.state.context())
        finally:
            self.batches += 1
            self._drawn.set()

    @work(thread=True, exclusive=True, group="audit", name="config audit", exit_on_error=False)
    def _audit(self, namespaces: list[dict[str, Any]]) -> None:
        findings = audit(namespaces)
        if not get_current_worker().is_cancelled:   # newer context is being audited
            self.call_from_thread(self._take_findings, findings)

    def _take_findings(self, findings: list[Finding]) -> None:
        self.state.findings = findings
        self.w_timeouts.update_from_state()

    def _refresh_panels(self) -> None:
        self.w_header.refresh()
        self.w_causes.update_from_state()
        self.w_conntrack.update_from_state()
        self.w_timeouts.update_from_state()

    @on(ResetTable.Selected)
    def _on_selected(self, message: ResetTable.Selected) -> None:
        self.w_detail.show(message.row)

    # -- keys ----------------------------------------------------------------
    def action_pause(self) -> None:
        paused = self.state.toggle_pause()
        self.w_table.sync()
        self.w_header.refresh()
        self.notify("paused: events are still counted" if paused else "resumed", timeout=2)

    def action_filter(self) -> None:
        def validate(text: str) -> str | None:
            try:
                FilterSpec.parse(text)
            except FilterError as e:
                return str(e)
            return None

        def done(text: str | None) -> None:
            if text is None:
                return
            self.state.set_filter(text)
            self.w_table.sync()
            self.w_header.refresh()

        self.push_screen(FilterScreen(self.state.filter.text, validate), done)

    def action_cycle_cause(self) -> None:
        cause = self.state.cycle_cause()
        self.w_table.sync()
        self._refresh_panels()
        self.notify(f"cause filter: {cause or 'all causes'}", timeout=2)

    def action_export(self) -> None:
        verdicts = self.state.retained_verdicts()
        stamp = datetime.fromtimestamp(self._wall(), timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = self.export_dir / f"rsttrace-resets-{stamp}.csv"
        older = self.state.total - len(verdicts)
        from rsttrace.analysis.report import node_of
        self.export_job = self._export(verdicts, self.feeder.names.snapshot(), path, older,
                                       node_of(self.source.header or {}))

    @work(thread=True, name="export", exit_on_error=False)
    def _export(self, verdicts: list[Verdict], names: dict[int, str], path: Path, older: int,
                node: str | None = None) -> None:
        from rsttrace.analysis.report import write_verdicts
        from rsttrace.outfile import OutFile, OutputError
        try:
            self.export_dir.mkdir(parents=True, exist_ok=True)
            with OutFile(path) as out:
                write_verdicts(verdicts, out, names, node)
        except OutputError as e:
            raise WorkFailed(f"{e} (choose another --export-dir)") from e
        except OSError as e:
            raise WorkFailed(f"{e.strerror}: {self.export_dir} (choose another --export-dir)") from e
        self.last_export = path
        note = f" ({older} older ones are no longer in memory: use --record)" if older > 0 else ""
        self.call_from_thread(self.tell, f"exported {len(verdicts)} resets to {path}{note}", timeout=8)

    def action_fix_plan(self) -> None:
        row = self.w_table.selected
        if row is None:
            self.notify("select a reset first (↑/↓)", severity="warning")
            return

        fixes = self.state.fix_plan(row)

        def done(result: Any) -> None:
            if result == "apply" and self.apply_fixes is not None:
                self._apply(fixes, self.state.seen_namespaces())

        self.push_screen(FixPlanScreen(row, self.apply_unavailable, fixes), done)

    @work(thread=True, name="apply", exit_on_error=False)
    def _apply(self, fixes: list[Fix], namespaces: list[dict[str, Any]]) -> None:
        assert self.apply_fixes is not None
        msg = self.apply_fixes(fixes, self.source.header, namespaces)
        self.call_from_thread(self.tell, msg, timeout=10)

    def tell(self, text: str, **kw: Any) -> None:
        """A notification that quotes the host (namespace names, paths):
        plain text through the one sanitiser, never markup (`[/]` in a
        name would stop the screen, `[link=...]` would make a link)."""
        self.notify(printable(text), markup=False, **kw)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def stop_source(self) -> None:
        """Stops the feed thread, then the source (BPF detached) and the
        recording (completed), without leaving the screen."""
        self._stop.set()
        # Polled (bounded) rather than blocking the event loop: the feed thread
        # leaves its poll within one poll timeout, and the source must not be
        # stopped under a poll.
        for _ in range(300):
            if self._worker_done.is_set():
                break
            await asyncio.sleep(0.01)
        self._close_source()

    async def action_quit_clean(self) -> None:
        await self.stop_source()
        self.exit(0)

    def on_unmount(self) -> None:
        # Whatever ended the app, tracing is detached and the recording completed.
        self._stop.set()
