"""The live screen on replayed recordings, driven with Textual's Pilot."""

from __future__ import annotations

import asyncio
import functools
from datetime import timezone
from pathlib import Path

import pandas as pd
import pytest

from rsttrace.analysis.classify import Classifier
from rsttrace.analysis.report import COLUMNS
from rsttrace.schema.recording import read_recording
from rsttrace.tracer.replay import ReplaySource
from rsttrace.tui.app import RstApp
from rsttrace.tui.panels import DetailPane
from rsttrace.tui.screens import FixPlanScreen, HelpScreen
from rsttrace.tui.table import ResetTable
from test_tui_fixtures import EVIL_COMM, LB, T0, incident_records, storm_records, write
from test_tui_fixtures import header as header_of


def sync(fn):
    """Runs an async Pilot test on its own event loop (no asyncio plugin needed)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def make_app(path: Path, tmp_path: Path, **kw) -> RstApp:
    src = ReplaySource(path, speed=kw.pop("speed", 0))
    return RstApp(src, Classifier(netns_names=src.header["netns_names"]), tz=timezone.utc,
                  export_dir=tmp_path / "export", source_label="replay",
                  wall=lambda: T0 + 100, **kw)


async def settle(app: RstApp, pilot) -> None:
    """Waits (bounded) until the whole recording has been drawn."""
    for _ in range(200):
        await pilot.pause(0.02)
        if app.state.source_done and app.feeder.done:
            break
    await pilot.pause(0.15)  # the last batch after the source ended
    assert app.state.source_done, "replay did not finish"


def table_text(app: RstApp) -> list[str]:
    t = app.query_one(ResetTable)
    return [t.render_line(y).text for y in range(t.size.height)]


@pytest.fixture
def incidents(tmp_path) -> Path:
    return write(tmp_path / "incidents.jsonl", incident_records(), lost=3)


@sync
async def test_rows_causes_header_and_untrusted_text(incidents, tmp_path):
    app = make_app(incidents, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        lines = table_text(app)
        assert "CAUSE" in lines[0]
        assert "keepalive" in lines[1] and EVIL_COMM[:8] in lines[1]  # newest first
        assert "no_listener" in lines[2] and "keepalive" in lines[3]
        assert app.state.counts == {"keepalive": 2, "no_listener": 1}
        assert app.state.lost == 3
        detail = app.query_one(DetailPane)
        assert detail.row is not None and detail.row.process == f"{EVIL_COMM}[4321]"


@sync
async def test_detail_pane_follows_selection_and_shows_fix(incidents, tmp_path):
    app = make_app(incidents, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("down")
        text = str(app.query_one("#detail").render())
        assert "no_listener" in text and "nothing listens on 10.0.2.2:3307" in text
        await pilot.press("down")
        text = str(app.query_one("#detail").render())
        assert "sent by  10.96.0.10:3306  in netns lb" in text
        assert "reset    10.0.1.2:40001  in netns cli" in text
        assert "ip netns exec cli sysctl -w net.ipv4.tcp_keepalive_time=" in text
        await pilot.press("home")
        assert app.query_one(ResetTable).selected.seq == 3


@sync
async def test_filter_and_cause_cycle(incidents, tmp_path):
    app = make_app(incidents, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("slash")
        await pilot.press(*"port:40001")
        await pilot.press("enter")
        await pilot.pause(0.05)
        assert [r.verdict.dport for r in app.state.view] == [40001]
        await pilot.press("slash", "ctrl+u", *"port:abc", "enter")
        await pilot.pause(0.05)
        assert "not a port" in str(app.screen.query_one("#filter-error").render())
        await pilot.press("escape")
        await pilot.press("slash", "ctrl+u", "enter")  # empty clears
        await pilot.pause(0.05)
        assert len(app.state.view) == 3
        await pilot.press("c")
        assert {r.cause for r in app.state.view} == {"keepalive"}
        await pilot.press("c")
        assert {r.cause for r in app.state.view} == {"no_listener"}
        await pilot.press("c")
        assert len(app.state.view) == 3


@sync
async def test_pause_keeps_counting(tmp_path):
    rec = write(tmp_path / "slow.jsonl", storm_records(40, per_s=10))
    app = make_app(rec, tmp_path, speed=10)  # 4 s of resets in about 0.6 s
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("p")
        assert app.state.paused
        await settle(app, pilot)
        assert app.state.total == 40 and len(app.state.view) == 0
        assert "PAUSED +40" in app.query_one("#header").render().plain
        await pilot.press("p")
        assert len(app.state.view) == 40


@sync
async def test_export_writes_the_report_columns(incidents, tmp_path):
    app = make_app(incidents, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("e")
        await app.export_job.wait()
        path = app.last_export
        assert path is not None and path.parent == tmp_path / "export"
    df = pd.read_csv(path)
    assert list(df.columns) == COLUMNS
    assert len(df) == 5  # one row per reset event: two pairs and one refused SYN
    assert sorted(df["cause"].unique()) == ["keepalive", "no_listener"]
    assert EVIL_COMM in set(df["comm"].dropna())


@sync
async def test_export_never_writes_through_a_planted_link(incidents, tmp_path):
    """The export's name is predictable (its time), and so was its
    temporary name (`.{name}.{pid}.tmp`): a link planted there made the
    export write wherever it pointed. The file is 0600."""
    import os
    import stat
    from datetime import datetime
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    export = tmp_path / "export"
    export.mkdir()
    name = f"rsttrace-resets-{datetime.fromtimestamp(T0 + 100, timezone.utc):%Y%m%d-%H%M%S}.csv"
    (export / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    app = make_app(incidents, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("e")
        await app.export_job.wait()
    assert app.last_export == export / name
    assert victim.read_text() == "precious\n"
    st = os.lstat(export / name)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


@sync
async def test_fix_plan_and_help_screens(incidents, tmp_path):
    app = make_app(incidents, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("f")
        assert isinstance(app.screen, FixPlanScreen)
        plan = str(app.screen.query_one("#plan").render())
        assert "dry run" in plan and "sysctl -w net.ipv4.tcp_keepalive_time=" in plan
        hint = str(app.screen.query_one("#plan-hint").render())
        assert "not available" in hint  # no remedy engine given: commands only
        await pilot.press("a")  # refused without an engine: still on the plan
        assert isinstance(app.screen, FixPlanScreen)
        await pilot.press("escape", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@sync
async def test_fix_apply_needs_explicit_confirmation(incidents, tmp_path):
    applied: list[list] = []
    app = make_app(incidents, tmp_path,
                   apply_fixes=lambda fixes, header, nss: applied.append(fixes) or "applied")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("f", "a", "n")  # declined
        await pilot.pause(0.05)
        assert applied == []
        await pilot.press("a", "y")
        for _ in range(50):
            await pilot.pause(0.02)
            if applied:
                break
        assert len(applied) == 1 and applied[0][0].key == "net.ipv4.tcp_keepalive_time"


@sync
async def test_quit_stops_source_and_completes_recording(tmp_path):
    src_path = write(tmp_path / "in.jsonl", incident_records())
    from rsttrace.schema.recording import RecordingWriter
    out = tmp_path / "out.jsonl"
    src = ReplaySource(src_path, speed=0)
    app = RstApp(src, Classifier(), tz=timezone.utc, recorder=RecordingWriter(out, src.header))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("q")
    assert app.return_code == 0
    assert any(b.key == "q" and b.action == "quit_clean" for b in RstApp.BINDINGS)
    assert src.done
    rec = read_recording(out)
    assert rec.totals is not None and not rec.truncated
    assert rec.records == incident_records()


@sync
async def test_storm_keeps_memory_bounded(tmp_path):
    rec = write(tmp_path / "storm.jsonl", storm_records(5000, per_s=5000))
    app = make_app(rec, tmp_path, capacity=300)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert app.state.total == 5000
        assert len(app.state.ring) == 300 and len(app.state.view) == 300
        assert app.state.row_at(0).t == pytest.approx(T0 + 8.0 + 4999 / 5000, abs=1e-3)


# ---- workers: blocking work off the UI thread, one error path ----------------

async def until(pilot, cond, steps: int = 100) -> None:
    """Waits (bounded) until `cond()` holds."""
    for _ in range(steps):
        if cond():
            return
        await pilot.pause(0.02)


def _on_ui_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()   # asyncio.run's loop: the UI


@sync
async def test_config_audit_runs_in_a_worker_and_feeds_the_timeouts_panel(incidents, tmp_path, monkeypatch):
    import rsttrace.tui.app as tui_app
    from rsttrace.analysis.config import audit
    from rsttrace.tui.panels import TimeoutsPanel
    threads: list[bool] = []

    def spy(namespaces):
        threads.append(_on_ui_thread())
        return audit(namespaces)
    monkeypatch.setattr(tui_app, "audit", spy)
    app = make_app(incidents, tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        await until(pilot, lambda: app.state.findings)
        panel = str(app.query_one(TimeoutsPanel).render())
    assert threads and not any(threads)
    # lb: conntrack forgets after 4 s while keepalive is 7200 s
    assert any(f.netns == LB and f.key == "ordering" for f in app.state.findings)
    assert "lb" in panel and "broken" in panel


@sync
async def test_export_runs_in_a_worker(incidents, tmp_path, monkeypatch):
    import rsttrace.analysis.report as report
    threads: list[bool] = []
    write_verdicts = report.write_verdicts

    def spy(verdicts, out, names=None, node=None):
        threads.append(_on_ui_thread())
        return write_verdicts(verdicts, out, names, node)
    monkeypatch.setattr(report, "write_verdicts", spy)
    app = make_app(incidents, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("e")
        await app.export_job.wait()
    assert threads == [False] and app.last_export is not None


def _errors(app: RstApp) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


@sync
async def test_a_failed_export_is_a_notification_and_the_screen_stays(incidents, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory\n")
    app = make_app(incidents, tmp_path)
    app.export_dir = blocked / "sub"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("e")
        with pytest.raises(Exception):
            await app.export_job.wait()
        await pilot.pause(0.05)
        assert app.is_running
        errors = _errors(app)
    assert len(errors) == 1 and errors[0].startswith("export failed: ")
    assert "(choose another --export-dir)" in errors[0] and app.last_export is None


@sync
async def test_a_failed_apply_is_a_notification(incidents, tmp_path):
    def boom(fixes, header, namespaces):
        raise RuntimeError("the engine broke")
    app = make_app(incidents, tmp_path, apply_fixes=boom)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("f", "a", "y")
        await until(pilot, lambda: _errors(app))
        assert app.is_running
    assert _errors(app) == ["apply failed: RuntimeError: the engine broke"]


@sync
async def test_a_failed_source_shows_in_the_header_and_keeps_what_came_before(incidents, tmp_path):
    class FailingSource:
        """Gives a recording's records, then fails as a broken device would."""
        header = header_of()

        def __init__(self):
            self.polls = 0

        def start(self):
            return self

        def poll(self, timeout_s=0.1):
            self.polls += 1
            if self.polls > 1:
                raise OSError(5, "Input/output error")
            return incident_records()

        def stats(self):
            return {"events": 11, "lost": 0}

        def stop(self):
            pass

    src = FailingSource()
    app = RstApp(src, Classifier(netns_names=src.header["netns_names"]), tz=timezone.utc,
                 export_dir=tmp_path, wall=lambda: T0 + 100)
    async with app.run_test(size=(160, 24)) as pilot:
        await until(pilot, lambda: app.state.error)
        await pilot.pause(0.1)
        header = app.query_one("#header").render().plain
        assert app.is_running
    assert "ERROR" in header and "Input/output error" in header
    assert app.state.total == 3            # the first poll's resets are on the screen
    assert _errors(app) == ["feed failed: OSError: [Errno 5] Input/output error"]


def test_apply_hands_the_namespace_cookies_seen_to_the_remedy_engine(monkeypatch):
    """The screen's apply path must find the namespace a fix was computed
    for by its cookie too, as `fix --from` does; without the context's
    cookies it matched any namespace that took the inode."""
    import os

    from rsttrace.analysis.fixes import Where, keepalive_fixes
    from rsttrace.remedy import netns, sources
    from rsttrace.tui.apply import remedy_applier
    if os.geteuid() != 0:
        pytest.skip("the remedy engine is offered to root only")
    asked: list[tuple] = []

    def locate(inode, name, cookie):
        asked.append((inode, name, cookie))
        return netns.Located(None, "not looked up in this test")
    target_for = sources.target_for
    monkeypatch.setattr(sources, "target_for",
                        lambda f, node, seen=None, find=None: target_for(f, node, seen, locate))
    apply_fixes, why = remedy_applier()
    assert why is None
    fixes = keepalive_fixes(Where(4026532999, "pod-a"), None, 900.0, "IPVS tcp timeout")
    msg = apply_fixes(fixes, {"netns_cookies": {"4026532001": 11}},
                      [{"netns": 4026532999, "cookie": 77}])
    assert asked == [(4026532999, "pod-a", 77)]
    assert msg.startswith("nothing to change") and "not looked up in this test" in msg
