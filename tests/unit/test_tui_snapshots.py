"""Screenshots of the live screen at 80x24 and 160x48 on a replayed
recording. Time is frozen: times come from the recording (shown in UTC), the
wall clock is fixed, and the replay is drawn to its end before the shot.
Update after an intended change with `pytest --snapshot-update`."""

from __future__ import annotations

from datetime import timezone

import pytest

from rsttrace.analysis.classify import Classifier
from rsttrace.tracer.replay import ReplaySource
from rsttrace.tui.app import RstApp
from test_tui_fixtures import T0, ctx, incident_records, write


def recording(tmp_path):
    # A conntrack table filling up in lb, so the gauges have something to show.
    recs = incident_records() + [ctx(T0 + 15.0, count=230000, drop=16, invalid=4)]
    return write(tmp_path / "snap.jsonl", recs, lost=2)


def app_for(tmp_path) -> RstApp:
    src = ReplaySource(recording(tmp_path), speed=0)
    return RstApp(src, Classifier(netns_names=src.header["netns_names"]), tz=timezone.utc,
                  export_dir=tmp_path, source_label="replay snap.jsonl", wall=lambda: T0 + 100)


async def settle(pilot) -> None:
    app = pilot.app
    for _ in range(200):
        await pilot.pause(0.02)
        if app.state.source_done:
            break
    await pilot.pause(0.2)
    assert app.state.source_done


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_live_screen(snap_compare, tmp_path, size):
    assert snap_compare(app_for(tmp_path), terminal_size=size, run_before=settle)


def test_fix_plan_80x24(snap_compare, tmp_path):
    async def open_plan(pilot):
        await settle(pilot)
        await pilot.press("down", "down", "f")
    assert snap_compare(app_for(tmp_path), terminal_size=(80, 24), run_before=open_plan)
