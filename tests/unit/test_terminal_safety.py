"""Every host-derived string shown on a terminal goes through one sanitiser
(analysis/safe.py `printable`): raw OSC 52 (clipboard), OSC 8 (links),
clear-screen, C1 controls, bidi overrides and bytes that were not UTF-8
reach the screen as visible escapes, from every command and the live
screen's notifications."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rsttrace.analysis.safe import SafeStream, printable
from rsttrace.cli import CLIError, main

FIX = Path(__file__).resolve().parents[1] / "fixtures"
OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"       # write "rm -rf ~" to the clipboard
OSC8 = "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\"
CLEAR = "\x1b[2J\x1b[H"
C1 = "\x9b31m"                               # CSI as one C1 byte
BIDI = "\u202egnp.exe"
BYTE = "bad\udcffname"                       # a non-UTF-8 byte read with surrogateescape
EVIL = OSC52 + OSC8 + CLEAR + C1 + BIDI + BYTE + "\r\n\tz"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\udcff", "\r", "\t")


def clean(text: str) -> bool:
    return not any(c in text for c in RAW)


@pytest.mark.parametrize("text,shown", [
    (OSC52, "\\x1b]52;c;cm0gLXJmIH4=\\x07"), (C1, "\\x9b31m"), (BIDI, "\\u202egnp.exe"),
    (BYTE, "bad\\xffname"), ("\ud800x", "\\ud800x"), ("tab\there", "tab\\x09here"),
    ("zero\u200bwidth", "zero\\u200bwidth"), ("名前 ok", "名前 ok"), (7, "7"),
])
def test_printable_escapes_what_would_drive_a_terminal(text, shown):
    assert printable(text) == shown


def test_printable_keeps_what_it_is_told_to_and_is_idempotent():
    assert printable("a\nb\x1b", keep="\n") == "a\nb\\x1b"
    assert printable(printable(EVIL)) == printable(EVIL)


def test_safe_stream_keeps_line_structure_only(capsys):
    import sys
    s = SafeStream(sys.stdout)
    s.write("progress\r1 " + EVIL + "\n")
    out = capsys.readouterr().out
    assert out.startswith("progress\r1 \\x1b]52") and out.endswith("\r\n\tz\n")
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out


def test_cli_errors_are_one_sanitised_line(monkeypatch, capsys):
    import rsttrace.commands.report as rep

    def boom(args):
        raise CLIError(f"no such namespace {EVIL}")
    monkeypatch.setattr(rep, "run", boom)
    assert main(["report", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and clean(err) and "\\x1b]52" in err


def _recording_with_evil_names(tmp_path: Path) -> Path:
    # (a recording cannot hold a lone surrogate: JSON refuses it, the reader too)
    EVIL = globals()["EVIL"].replace(BYTE, "")
    lines = (FIX / "keepalive_lab.jsonl").read_text().splitlines()
    head = json.loads(lines[0])
    head["netns_names"] = {k: v + EVIL for k, v in head["netns_names"].items()}
    recs = [json.loads(x) for x in lines[1:-1]]
    for r in recs:
        if r["kind"] == "reset" and r.get("comm"):
            r["comm"] = EVIL
        for ns in r.get("namespaces", ()):
            ns["name"] = "ns" + EVIL
    recs.insert(1, {"kind": "reset", "t": "\x1b[2J"})       # a warning that quotes nothing raw
    p = tmp_path / "evil.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [head, *recs]) + "\n" + lines[-1] + "\n")
    return p


def test_report_summary_and_warnings_print_no_raw_control(tmp_path, capsys):
    p = _recording_with_evil_names(tmp_path)
    assert main(["report", str(p)]) == 0
    cap = capsys.readouterr()
    assert "keepalive" in cap.out and "did not validate" in cap.err
    assert clean(cap.out.replace("\n", "")) and clean(cap.err.replace("\n", ""))
    # a path given by the user is shown the same way
    q = tmp_path / ("rec" + CLEAR + ".jsonl")
    q.write_text(p.read_text())
    assert main(["report", str(q)]) == 0
    assert clean(capsys.readouterr().err.replace("\n", ""))


def test_fix_plan_text_is_sanitised():
    from rsttrace.remedy.model import Change, Handover, Plan, Target
    from rsttrace.remedy.render import plan_text
    t = Target(kind="name", ref="pod", inode=4026532247, path="/run/netns/pod", label="pod" + EVIL)
    plan = Plan(changes=[Change(t, "net.ipv4.tcp_keepalive_time", 7200, 60, ["idle " + EVIL])],
                handovers=[Handover("pod", "sysctls", "line1\n" + EVIL, "because " + EVIL)],
                skipped=["gone " + EVIL], warnings=["w " + EVIL], errors=[])
    text = plan_text(plan, "1 resets in " + EVIL)
    assert clean(text.replace("\n", "")) and "\\x1b]52" in text


def test_doctor_prints_host_values_sanitised(monkeypatch, capsys):
    import os

    import rsttrace.commands.doctor as doc
    rep = {"kernel": "6.18" + EVIL, "plan": {"reset_sent": {"available": True, "hook": "tp" + EVIL, "why": EVIL}},
           "facts": {"tracefs": EVIL}, "namespaces": [{"netns": 1, "name": "n" + EVIL, "ct": {"count": 1},
                                                       "sysctl": {}, "ipvs": None}],
           "findings": [{"severity": "warning", "message": "m" + EVIL}]}
    monkeypatch.setattr(doc, "gather", lambda load, cost: rep)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert clean(out.replace("\n", "")) and out.count("\\x1b]52") == 6


def test_live_screen_notifications_are_plain_sanitised_text(tmp_path):
    from datetime import timezone

    from rsttrace.analysis.classify import Classifier
    from rsttrace.tracer.replay import ReplaySource
    from rsttrace.tui.app import RstApp

    src = ReplaySource(FIX / "keepalive_lab.jsonl")
    app = RstApp(src, Classifier(), tz=timezone.utc, export_dir=tmp_path, source_label="replay",
                 apply_fixes=lambda fixes, header, nss: "applied x in ns[/]" + EVIL)

    async def run() -> list:
        async with app.run_test(size=(80, 24)) as pilot:
            app._apply([], [])
            await pilot.pause(0.3)
            return list(app._notifications)
    notes = asyncio.run(run())
    assert notes and all(clean(n.message) and not n.markup for n in notes)
    assert any("ns[/]" in n.message for n in notes)
