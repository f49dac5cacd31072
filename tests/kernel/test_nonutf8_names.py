"""Names that are not UTF-8, for real: a namespace made with
`ip netns add $'rtu-…\\xff'` and a bind mount whose path has that byte (both
show in /proc/self/mountinfo). `record`, `live`, `export` and `fix` start,
and what they write is valid UTF-8 JSON with the byte as `\\xNN`
(tracer/fsnames.py)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from rsttrace.remedy import keys as K

pytestmark = pytest.mark.kernel

RSTTRACE = [sys.executable, "-m", "rsttrace"]
LISTEN = ("import socket, sys; s = socket.create_server(('127.0.0.1', 0)); "
          "print('ready', flush=True); sys.stdin.read()")


@pytest.fixture
def odd_ns():
    """(raw name as Python holds it, its text form): a namespace with a
    listener, so every context snapshot lists it."""
    raw = os.fsdecode(b"rtu-" + uuid.uuid4().hex[:6].encode() + b"\xff")
    subprocess.run(["ip", "netns", "add", raw], check=True)
    p = None
    try:
        subprocess.run(["ip", "-n", raw, "link", "set", "lo", "up"], check=True)
        p = subprocess.Popen(["ip", "netns", "exec", raw, sys.executable, "-c", LISTEN],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        yield raw, raw[:-1] + "\\xff"
    finally:
        if p is not None:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", raw], check=False)


@pytest.fixture
def odd_mount(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    dst = os.path.join(os.fsencode(tmp_path), b"mnt\xfe")
    os.mkdir(dst)
    subprocess.run([b"mount", b"--bind", os.fsencode(src), dst], check=True)
    try:
        yield dst
    finally:
        subprocess.run([b"umount", dst], check=False)


def run(args, env=None, timeout=120):
    return subprocess.run(RSTTRACE + args, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def utf8_records(path) -> list[dict]:
    """Every line, decoded as strict UTF-8 and parsed as JSON."""
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def names_in(records: list[dict]) -> set[str]:
    out = set(records[0].get("netns_names", {}).values())
    for r in records:
        if r.get("kind") == "ctx":
            out |= {n["name"] for n in r["namespaces"]}
    return out


def test_record_with_a_mount_path_that_is_not_utf8(odd_mount, tmp_path):
    out = tmp_path / "m.jsonl"
    r = run(["record", "-o", str(out), "--duration", "1", "-q"])
    assert r.returncode == 0, r.stderr
    assert utf8_records(out)[-1]["kind"] == "totals"


def test_record_a_namespace_named_with_a_byte_that_is_not_utf8(odd_ns, tmp_path):
    raw, shown = odd_ns
    out = tmp_path / "n.jsonl"
    r = run(["record", "-o", str(out), "--duration", "2", "-q", "--csv", str(tmp_path / "n.csv")])
    assert r.returncode == 0, r.stderr
    records = utf8_records(out)
    assert shown in names_in(records)
    [ns] = [n for r in records if r["kind"] == "ctx" for n in r["namespaces"]
            if n["name"] == shown][:1]
    assert ns["netns"] == os.stat(f"/run/netns/{raw}").st_ino
    assert records[0]["netns_cookies"][str(ns["netns"])] == ns["cookie"] is not None
    # filtered by that name, the header names it too
    r = run(["record", "-o", str(out), "--duration", "1", "-q", "--netns", raw])
    assert r.returncode == 0, r.stderr
    assert utf8_records(out)[0]["netns_names"][str(ns["netns"])] == shown


def test_export_serves_a_namespace_named_with_a_byte_that_is_not_utf8(odd_ns):
    raw, shown = odd_ns
    p = subprocess.Popen(RSTTRACE + ["export", "--listen", "127.0.0.1:0", "--ctx-period", "0.5",
                                     "--duration", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = p.stdout.readline().strip()
        assert url.startswith("http://"), p.stderr.read()
        label = 'netns="' + shown.replace("\\", "\\\\") + '"'
        deadline, body = time.monotonic() + 20, ""
        while label not in body and time.monotonic() < deadline:
            time.sleep(0.5)
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == 200
                body = resp.read().decode("utf-8")
        assert label in body
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)


def test_live_starts_and_records_with_a_namespace_named_with_a_byte_that_is_not_utf8(odd_ns,
                                                                                     tmp_path):
    """The live screen on a terminal (a pty), recording as it goes; q quits."""
    _, shown = odd_ns
    rec = tmp_path / "live.jsonl"
    master, slave = pty.openpty()
    p = subprocess.Popen(RSTTRACE + ["live", "--record", str(rec)], stdin=slave, stdout=slave,
                         stderr=slave, env={**os.environ, "TERM": "xterm-256color",
                                            "COLUMNS": "100", "LINES": "30"})
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        # started once the recording holds a context snapshot after its header
        while time.monotonic() < deadline and p.poll() is None:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
            if rec.exists() and rec.read_bytes().count(b"\n") >= 2:
                break
        assert p.poll() is None, seen[-2000:]
        time.sleep(1)
        os.write(master, b"q")
        deadline = time.monotonic() + 30
        while p.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        assert p.wait(timeout=10) == 0, seen[-2000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    assert b"Traceback" not in seen
    assert shown in names_in(utf8_records(rec))


def test_fix_plans_applies_persists_and_rolls_back_such_a_namespace(odd_ns, fix_env, tmp_path):
    raw, shown = odd_ns
    r = run(["fix", "--yes", "--netns", raw, "--set", f"{K.KEEPALIVE_TIME}=120"], fix_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"set {K.KEEPALIVE_TIME}=120 in {shown} (was 7200; read back)" in r.stdout
    conf = os.path.join(os.fsencode(fix_env["RSTTRACE_ETC_DIR"]), b"netns.d",
                        os.fsencode(raw) + b".conf")
    assert os.path.exists(conf)   # named with the namespace's own bytes
    subprocess.run(["ip", "netns", "exec", raw, "sysctl", "-qw", f"{K.KEEPALIVE_TIME}=7200"],
                   check=True)
    r = run(["fix", "--reapply"], fix_env)
    assert r.returncode == 0 and f"in {shown}" in r.stdout, r.stdout + r.stderr
    r = run(["fix", "--rollback"], fix_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not os.path.exists(conf)

    # from a recording, whose names are text: found again by inode and cookie
    out = tmp_path / "f.jsonl"
    subprocess.run(["ip", "netns", "exec", raw, "sysctl", "-qw",
                    "net.netfilter.nf_conntrack_tcp_timeout_established=300"], check=True)
    assert run(["record", "-o", str(out), "--duration", "1", "-q", "--netns", raw]).returncode == 0
    r = run(["fix", "--dry-run", "--from", str(out)], fix_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{shown} " in r.stdout and "150" in r.stdout, r.stdout
    assert "identified by inode and name only" not in r.stdout


def test_fix_prints_a_namespace_name_with_control_characters_escaped(fix_env):
    """A name is anyone's choice of bytes: one that clears the screen is
    printed as \\x1b... in what `fix` says it did (the plan table is
    rendered by remedy/render.py)."""
    raw = f"rte-{uuid.uuid4().hex[:6]}\x1b[2J"
    subprocess.run(["ip", "netns", "add", raw], check=True)
    try:
        r = run(["fix", "--yes", "--netns", raw, "--set", f"{K.KEEPALIVE_TIME}=120"], fix_env)
        assert r.returncode == 0, r.stdout + r.stderr
        back = run(["fix", "--rollback"], fix_env)
        assert back.returncode == 0, back.stdout + back.stderr
        said = [line for out in (r.stdout, back.stdout) for line in out.splitlines()
                if line.startswith(("set ", "restored "))]
        assert all("\x1b" not in line for line in said), said
        # set, the value restored, its persisted file restored
        assert sum(raw[:-4] + "\\x1b[2J" in line for line in said) == 3, said
    finally:
        subprocess.run(["ip", "netns", "del", raw], check=False)
