"""The live screen on the real tracer: a refused connect inside a throwaway
namespace shows up as a row with cause no_listener."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import timezone

import pytest

pytestmark = pytest.mark.kernel

CONNECT = """
import socket
for port in (39901, 39902, 39903):  # nothing listens: each SYN is answered by a reset
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        pass
    s.close()
"""


@pytest.fixture
def netns():
    name = f"rttui-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name, os.stat(f"/run/netns/{name}").st_ino
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_live_screen_shows_refused_connect(netns):
    from rsttrace.analysis.classify import Classifier
    from rsttrace.tracer.session import TraceSession
    from rsttrace.tui.app import RstApp

    name, inode = netns
    session = TraceSession(netns=[inode], netns_names={inode: name}, ctx_period_s=1.0)
    session.start()
    app = RstApp(session, Classifier(netns_names=session.header["netns_names"]),
                 tz=timezone.utc, source_label="live")

    async def run() -> list:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
            subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", CONNECT],
                           check=True, timeout=10)
            deadline = time.monotonic() + 8  # the classifier waits ~1 s for a reset's pair
            while time.monotonic() < deadline and len(app.state.view) < 3:
                await asyncio.sleep(0.1)
            rows = list(app.state.view)
            await pilot.press("q")
            return rows

    try:
        rows = asyncio.run(run())
    finally:
        app.shutdown()
    assert len(rows) >= 3, f"expected 3 refused connects, saw {rows}"
    assert {r.cause for r in rows} == {"no_listener"}
    assert {r.netns for r in rows} == {name}
    assert {p for r in rows for p in r.ports} >= {39901, 39902, 39903}
    assert session.stopped  # quitting detached the BPF program
