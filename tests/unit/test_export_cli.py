"""`rsttrace export` as a user runs it: a recording replayed and served
over HTTP on loopback, scraped like Prometheus does; bad input gives one
line saying what to do."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rsttrace.exporter.server import DEFAULT_PORT, ListenError, parse_listen

FIX = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTED = json.loads((FIX / "expected.json").read_text())


def run_cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "rsttrace", "export", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:9471", ("127.0.0.1", 9471)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9471", ("::1", 9471)),
    ("9471", ("127.0.0.1", 9471)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
])
def test_parse_listen(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["localhost:9471", "127.0.0.1", "127.0.0.1:70000", "::1:9471",
                                  "[::1]9471", "1.2.3.4:port", ""])
def test_parse_listen_rejects(text):
    with pytest.raises(ListenError, match="ADDR:PORT"):
        parse_listen(text)


def test_cli_default_port_is_the_servers():
    from rsttrace.commands import export
    assert export.DEFAULT_PORT == DEFAULT_PORT


@pytest.mark.parametrize("args,words", [
    (["--listen", "nowhere:1"], "ADDR:PORT"),
    (["--netns-cap", "0"], "--netns-cap"),
    (["--replay", "/nonexistent/rec.jsonl"], "no such file"),
    (["--replay", str(FIX / "keepalive_lab.jsonl"), "--port", "3306"], "--replay"),
    (["--replay", str(FIX / "keepalive_lab.jsonl"), "--idle-timeout", "nlb"], "NAME=SECONDS"),
    (["--duration", "-1"], "--duration"),
])
def test_bad_input_is_one_clear_line(args, words):
    p = run_cli(*args)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsttrace: ") and words in lines[0], p.stderr


def test_port_taken_is_a_clear_error():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        port = s.getsockname()[1]
        p = run_cli("--replay", str(FIX / "keepalive_lab.jsonl"), "--listen", f"127.0.0.1:{port}")
    finally:
        s.close()
    assert p.returncode == 2 and "cannot listen" in p.stderr and "--listen" in p.stderr


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replay_served_over_http(name):
    p = subprocess.Popen([sys.executable, "-m", "rsttrace", "export", "--replay", str(FIX / name),
                          "--listen", "127.0.0.1:0", "--duration", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = p.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), p.stderr
        want = Counter(v["cause"] for v in EXPECTED[name])
        got: dict = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:      # the replay is decided within a poll or two
            samples = scrape(url)
            got = {dict(k[1])["cause"]: v for k, v in samples.items()
                   if k[0] == "rsttrace_reset_incidents_total" and v}
            if got == dict(want):
                break
            time.sleep(0.1)
        assert got == dict(want)
        from rsttrace.schema.recording import read_recording
        h = read_recording(FIX / name).header
        # every series names the recording's host as its node
        assert ("rsttrace_build_info", (("kernel", h["kernel"]), ("node", h["host"]),
                                        ("transport", "replay"), ("version", h["tool"]))) in samples
        assert all(dict(k[1]).get("node") == h["host"] for k in samples)
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0       # SIGTERM ends it cleanly
