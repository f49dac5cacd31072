"""The exporter's HTTP server as a hostile or careless client meets it:
paths it does not serve, requests that never finish, many connections at
once, and a namespace name that is not UTF-8. A recording is replayed (no
root) and the server is reached over real loopback sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rsttrace.exporter.server import Exporter
from rsttrace.tracer.replay import ReplaySource

FIX = Path(__file__).resolve().parents[1] / "fixtures"
# how long the tests wait for the server to drop a client that sends
# nothing more (above the server's own limit, well below a minute)
PATIENCE_S = 12.0


@pytest.fixture
def served():
    """A function: serve a recording; returns the started exporter with
    every record of the recording taken."""
    started = []

    def serve(path: Path) -> Exporter:
        exp = Exporter(ReplaySource(path), ("127.0.0.1", 0))
        exp.start()
        started.append(exp)
        while not exp.source_done:
            exp.step(0.05)
        exp.state.flush()
        return exp

    yield serve
    for exp in started:
        exp.stop()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def base(exp: Exporter) -> str:
    return exp.url.removesuffix("/metrics")


@pytest.mark.parametrize("path", ["/nope", "/metrics/x", "/metricsx", "/../etc/passwd", "/favicon.ico"])
def test_paths_not_served_are_404(served, path):
    exp = served(FIX / "keepalive_lab.jsonl")
    status, _ = get(base(exp) + path)
    assert status == 404
    assert get(exp.url)[0] == 200


def test_root_and_metrics_are_served(served):
    exp = served(FIX / "keepalive_lab.jsonl")
    status, body = get(base(exp) + "/")
    assert status == 200 and b"/metrics" in body
    status, body = get(exp.url + "?name[]=rsttrace_resets_total")
    assert status == 200 and b"rsttrace_resets_total" in body


def _half_sent(addr: tuple[str, int], refused_ok: bool = False) -> socket.socket:
    s = socket.create_connection(addr, timeout=PATIENCE_S + 5)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")   # the blank line never comes
    except OSError:
        if not refused_ok:        # closed at once: every slot was taken
            raise
    return s


def test_a_request_that_never_ends_is_dropped(served):
    exp = served(FIX / "keepalive_lab.jsonl")
    s = _half_sent(exp.address)
    t0 = time.monotonic()
    try:
        s.settimeout(PATIENCE_S)
        try:
            data = s.recv(4096)
        except TimeoutError:
            pytest.fail(f"the server still held the connection after {PATIENCE_S} s")
        except ConnectionResetError:
            data = b""
    finally:
        s.close()
    assert time.monotonic() - t0 < PATIENCE_S
    assert data == b"" or data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.0 408")


def test_idle_connections_do_not_take_a_thread_each(served):
    exp = served(FIX / "keepalive_lab.jsonl")
    before = threading.active_count()
    socks = []
    try:
        for _ in range(200):
            socks.append(_half_sent(exp.address, refused_ok=True))
        time.sleep(0.5)
        held = threading.active_count() - before
        assert held <= 32, f"{held} threads for 200 idle connections"
    finally:
        for s in socks:
            s.close()
    # and once they are gone the server answers again
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            if get(exp.url)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not recover from 200 idle connections"
        time.sleep(0.2)


def test_a_scrape_still_works_while_idle_connections_wait(served):
    exp = served(FIX / "keepalive_lab.jsonl")
    socks = [_half_sent(exp.address) for _ in range(5)]
    try:
        assert get(exp.url)[0] == 200
    finally:
        for s in socks:
            s.close()


def test_a_namespace_name_that_is_not_utf8_does_not_break_scrapes(tmp_path):
    # a name read from /run/netns with surrogateescape: the byte 0xff. A
    # recording cannot hold one (names are recorded as \\xNN text, and the
    # reader refuses lone surrogates), so it comes from the live resolver,
    # as for a namespace no snapshot has named yet.
    bad = b"pod-\xff".decode("utf-8", "surrogateescape")
    lines = [json.loads(l) for l in (FIX / "keepalive_lab.jsonl").read_text().splitlines()]
    del lines[0]["netns_names"]["4026532300"]
    for r in lines:
        for n in r.get("namespaces") or ():
            if n["netns"] == 4026532300:
                n["name"] = None
    rec = tmp_path / "unnamed.jsonl"
    rec.write_text("".join(json.dumps(r) + "\n" for r in lines))
    exp = Exporter(ReplaySource(rec), ("127.0.0.1", 0),
                   resolver=lambda ino: bad if ino == 4026532300 else None)
    exp.start()
    try:
        while not exp.source_done:
            exp.step(0.05)
        exp.state.flush()
        status, body = get(exp.url)
    finally:
        exp.stop()
    assert status == 200
    labels = {s.labels.get("netns") for f in text_string_to_metric_families(body.decode())
              for s in f.samples}
    assert "pod-\\xff" in labels
