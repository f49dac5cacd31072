"""Two nodes simulated on one host: one recorder over the lab's client
namespace (node-a), one over its router and database (node-b), each with
`record --netns`, as a recorder on that node would see. The keepalive
scenario's reset is sent by the router (node-b) and received by the client
(node-a); the firewall_reject scenario's is made by a rule on the router,
whose drop of the SYN node-b records. Neither recording alone names the
causes; the report over both joins the two ends, also with node-b's clock
shifted within the tolerance, and refuses the join (saying why) when the
shift is beyond it."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsttrace.lab.scenarios import run_scenario
from rsttrace.lab.topology import CLIENT
from rsttrace.schema.recording import read_recording

from e2e_record import lab  # noqa: F401 (a fixture)

pytestmark = pytest.mark.kernel

RSTTRACE = [sys.executable, "-m", "rsttrace"]
SHIFT_S = 0.15


def _started(rec: Path) -> bool:
    return rec.exists() and rec.read_text().count("\n") >= 2


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(RSTTRACE + ["report", *args], capture_output=True, text=True, timeout=120)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _shift(src: Path, dst: Path, by: float) -> None:
    """The recording as a node whose clock is `by` seconds ahead made it."""
    with open(src) as f, open(dst, "w") as out:
        for line in f:
            rec = json.loads(line)
            if isinstance(rec.get("t"), (int, float)):
                rec["t"] = round(rec["t"] + by, 6)
            out.write(json.dumps(rec) + "\n")


@pytest.fixture(scope="module")
def recordings(lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    a, b = tmp / "node-a.jsonl", tmp / "node-b.jsonl"
    procs = []
    try:
        for rec, node, nss in ((a, "node-a", [lab.cli]), (b, "node-b", [lab.node, lab.db])):
            cmd = RSTTRACE + ["record", "-o", str(rec), "--ctx-period", "0.5", "-q", "--node", node]
            for ns in nss:
                cmd += ["--netns", ns]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(_started(r) for r in (a, b)):
            assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
            time.sleep(0.1)
        run = run_scenario(lab, "keepalive")
        # the next scenario sets the router's defaults again: not within
        # the keepalive resets' pairing window, whose context decides them
        time.sleep(1.5)
        fw = run_scenario(lab, "firewall_reject")
        time.sleep(1.5)     # the pairing window and one more snapshot
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        errs = [p.communicate(timeout=30)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert run.errors and fw.errors, "a scenario made no reset"
    return lab, a, b, str(run.expect.service_port)


def test_each_recorder_sees_only_its_namespaces(recordings):
    lab, a, b, _ = recordings
    inodes = lab.inodes()
    for path, node, names in ((a, "node-a", [lab.cli]), (b, "node-b", [lab.node, lab.db])):
        r = read_recording(path)
        assert r.header["node"] == node and r.header["boot_id"] and r.header["monotonic"] > 0
        allowed = {inodes[n] for n in names}
        netns = {rec["netns"] for rec in r.records if rec["kind"] == "reset"}
        assert netns and netns <= allowed, (node, netns, allowed)
        ctx = {ns["netns"] for rec in r.records if rec["kind"] == "ctx" for ns in rec["namespaces"]}
        assert ctx and ctx <= allowed, (node, ctx, allowed)


def _client_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if CLIENT in (r["src"], r["dst"])]


def test_alone_the_client_node_cannot_name_the_cause(recordings, tmp_path):
    _, a, _, _ = recordings
    out = tmp_path / "a.csv"
    r = _report(str(a), "-o", str(out))
    assert r.returncode == 0, r.stderr
    recv = [x for x in _client_rows(_rows(out)) if x["direction"] == "recv"]
    assert recv and all(x["cause"] not in ("keepalive", "firewall_reject") for x in recv), recv
    assert all(x["node"] == "node-a" and x["peer_node"] == "" for x in recv)


@pytest.mark.parametrize("shift", [0.0, SHIFT_S])
def test_the_fleet_report_joins_both_ends(recordings, tmp_path, shift):
    _, a, b, port = recordings
    if shift:
        _shift(b, tmp_path / "node-b.jsonl", shift)
        b = tmp_path / "node-b.jsonl"
    out = tmp_path / "f.csv"
    r = _report(str(a), str(b), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr, r.stderr
    rows = _client_rows(_rows(out))
    # the firewall's reset: no TCP stack sent it; node-b's drop of the SYN
    # (after its DNAT) and the rule read there name the cause
    (fw,) = [x for x in rows if x["state"] == "SYN_SENT"]
    assert (fw["node"], fw["peer_node"], fw["cause"]) == ("node-a", "node-b", "firewall_reject"), fw
    assert "netfilter drop of its packet on node-b" in fw["evidence"] and "reject with tcp reset" in fw["evidence"]
    # the keepalive scenario's flows (its service port)
    rows = [x for x in rows if x is not fw and port in (x["sport"], x["dport"])]
    recv = [x for x in rows if x["direction"] == "recv"]
    sent = [x for x in rows if x["direction"] == "sent"]
    assert recv and sent
    for x in recv:
        assert (x["node"], x["peer_node"], x["cause"]) == ("node-a", "node-b", "keepalive"), x
        assert "conntrack established timeout" in x["evidence"] and "joined across nodes" in x["evidence"]
        assert f"{-shift * 1000:+.0f} ms" in x["evidence"] or shift == 0
    assert {x["incident"] for x in recv} <= {x["incident"] for x in sent}
    assert all((x["node"], x["peer_node"]) == ("node-b", "node-a") for x in sent)


def test_beyond_the_tolerance_nothing_is_joined_and_it_is_said(recordings, tmp_path):
    _, a, b, _ = recordings
    _shift(b, tmp_path / "node-b.jsonl", SHIFT_S)
    out = tmp_path / "f.csv"
    r = _report(str(a), str(tmp_path / "node-b.jsonl"), "-o", str(out), "--clock-tolerance", "0.05")
    assert r.returncode == 0, r.stderr
    assert all(x["peer_node"] == "" for x in _rows(out))
    assert "beyond the clock tolerance 0.05 s: not joined" in r.stderr, r.stderr
    assert "node-b ahead" in r.stderr
