"""`rsttrace agent` as a DaemonSet runs it: a subprocess on the real kernel,
real resets in throwaway namespaces (prefix rtagt-), scraped over HTTP;
its stdout lines, its flight recorder's files read by `rsttrace report`,
its health endpoints and SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from rsttrace.lab.netns import tcp_out_rsts
from scrape import get, scrape
from rsttrace.schema.recording import read_recording

pytestmark = pytest.mark.kernel

NODE = "agent-test-node"


@pytest.fixture
def lab(netns):
    netns.tag = "rtagt-" + uuid.uuid4().hex[:6]
    return netns


class Agent:
    """The agent subprocess; its stdout lines gathered by a thread."""

    def __init__(self, record_dir: Path, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rsttrace", "agent", "--listen", "127.0.0.1:0", "--node", NODE,
             "--record-dir", str(record_dir), "--ctx-period", "0.5", "--duration", "180", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self.base = ""
        # the URL is in the start-up line on stderr (stdout is the log's)
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "http://" in line:
                self.base = line.split("http://", 1)[1].split("/metrics", 1)[0]
                self.base = "http://" + self.base
                break
        assert self.base, "".join(self.stderr)
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True).start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def records(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines)]

    def scrape(self) -> dict[tuple[str, tuple], float]:
        def node_named(name: str, labels: dict[str, str]) -> dict[str, str]:
            assert labels.pop("node") == NODE, (name, labels)     # every series names the node
            return labels
        return scrape(self.base, node_named)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise


def wait_until(fn, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = fn()
        if ok:
            return last
        time.sleep(step)
    return last


def sent_resets(samples: dict, ns: str) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "rsttrace_resets_total" and dict(labels).get("netns") == ns
               and dict(labels)["direction"] == "sent")


def test_agent_counts_logs_and_records_real_resets(lab, tmp_path):
    rec_dir = tmp_path / "rec"
    agent = Agent(rec_dir, "--rotate-every", "4s")
    try:
        assert get(agent.base + "/healthz")[0] == 200
        assert wait_until(lambda: (get(agent.base + "/readyz")[0] == 200, True), timeout=15)
        ns = lab.add("ref")
        base_rsts = tcp_out_rsts(ns)
        n = lab.refuse(ns, 25)
        assert n == 25
        truth = tcp_out_rsts(ns) - base_rsts
        assert truth == n

        counted = wait_until(lambda: (lambda c: (c >= truth, c))(sent_resets(agent.scrape(), ns)),
                             timeout=15)
        assert counted == truth
        samples = agent.scrape()
        assert samples[("rsttrace_reset_incidents_total", (("cause", "no_listener"),))] >= n
        assert samples[("rsttrace_events_lost_total", ())] == 0

        # one JSON line per classified reset, naming the cause, the node and the namespace
        mine = wait_until(lambda: (lambda m: (len(m) >= n, m))(
            [r for r in agent.records() if r.get("kind") == "reset"
             and (r["sent"] or {}).get("netns_name") == ns]), timeout=10)
        assert len(mine) == n, [(r["sent"], r["received"]) for r in agent.records()][:3]
        for r in mine:
            assert r["node"] == NODE and r["cause"] == "no_listener" and r["confidence"] == "high"
            assert r["flow"]["src"] == "127.0.0.1" and r["flow"]["sport"] == 9
            assert r["received"]["netns_name"] == ns and r["received"]["state"] == "SYN_SENT"
            assert r["time"].endswith("Z") and "nothing listens" in r["evidence"]
        assert len({r["incident"] for r in mine}) == n

        # a rotated file: complete, and `rsttrace report` reads it
        def rotated():
            done = [p for p in sorted(rec_dir.glob("rsttrace-*.jsonl"))
                    if read_recording(p).totals is not None]
            return bool(done), done
        files = wait_until(rotated, timeout=15)
        assert files, sorted(rec_dir.iterdir())
        for p in files:
            assert p.stat().st_mode & 0o777 == 0o600
            rep = subprocess.run([sys.executable, "-m", "rsttrace", "report", str(p)],
                                 capture_output=True, text=True, timeout=60)
            assert rep.returncode == 0, rep.stderr
        assert get(agent.base + "/healthz")[0] == 200
    finally:
        rc = agent.stop()
    assert rc == 0, "".join(agent.stderr)

    # SIGTERM left every recording complete, and together they hold every reset
    files = sorted(rec_dir.glob("rsttrace-*.jsonl"))
    assert len(files) >= 2
    sent = 0
    for p in files:
        rec = read_recording(p)
        assert rec.totals is not None and not rec.truncated and not rec.warnings, (p, rec.warnings)
        assert rec.header["node"] == NODE
        sent += sum(1 for r in rec.records if r.get("kind") == "reset" and r.get("dir") == "sent"
                    and r.get("netns") == lab.inode(ns))
    assert sent == truth


def test_sigterm_during_a_storm_leaves_complete_recordings(lab, tmp_path):
    rec_dir = tmp_path / "rec"
    agent = Agent(rec_dir)
    try:
        assert wait_until(lambda: (get(agent.base + "/readyz")[0] == 200, True), timeout=15)
        ns = lab.add("storm")
        proc = lab.refusing(ns, 100_000, seconds=10)
        time.sleep(1.0)
    finally:
        rc = agent.stop()          # while the resets still come
    proc.kill()
    proc.wait()
    assert rc == 0, "".join(agent.stderr)
    files = sorted(rec_dir.glob("rsttrace-*.jsonl"))
    assert files
    for p in files:
        rec = read_recording(p)
        assert rec.totals is not None and not rec.truncated, p
        assert rec.totals["events"] == sum(1 for r in rec.records if r.get("kind") != "ctx")
    # every line on stdout is whole JSON
    assert agent.records()


def test_sigterm_right_after_a_storm_records_its_last_counts(lab, tmp_path):
    """Storm mode: the kernel counts a storm's resets and the agent reads
    the counts once a second; stopped at once after the storm, the last
    counts still reach the recording (full events + counts == the
    kernel's TcpOutRsts)."""
    rec_dir = tmp_path / "rec"
    agent = Agent(rec_dir, "--storm-rate", "1000")
    try:
        assert wait_until(lambda: (get(agent.base + "/readyz")[0] == 200, True), timeout=15)
        ns = lab.add("last")
        before = tcp_out_rsts(ns)
        made = lab.refuse(ns, 20_000, seconds=10)
        sent = tcp_out_rsts(ns) - before
    finally:
        rc = agent.stop()
    assert rc == 0, "".join(agent.stderr)
    assert made == sent > 5000
    ino = lab.inode(ns)
    recorded = 0
    for p in sorted(rec_dir.glob("rsttrace-*.jsonl")):
        rec = read_recording(p)
        assert rec.totals is not None and not rec.truncated and rec.totals["lost"] == 0, p
        for r in rec.records:
            if r.get("dir") == "sent" and r.get("netns") == ino:
                recorded += r["count"] if r["kind"] == "reset_agg" else r["kind"] == "reset"
    assert recorded == sent


# ---- what the node lacks: one line naming what to add --------------------

def agent_in(shell: str, tmp_path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`rsttrace agent` started by `shell` (AGENT in it is the command),
    in a mount namespace of its own: what the shell hides or unmounts
    there stays hidden from the rest of the host."""
    agent = (f"{sys.executable} -m rsttrace agent --listen 127.0.0.1:0 --record-dir {tmp_path / 'rec'} "
             "--duration 5")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           shell.replace("AGENT", agent)],
                          capture_output=True, text=True, timeout=timeout)


def one_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsttrace: "), p.stderr
    assert p.stdout == ""
    return lines[0]


# named as a securityContext spells it (CAP_ left off)
@pytest.mark.parametrize("cap,name", [("cap_sys_admin", "SYS_ADMIN"),
                                      ("cap_sys_ptrace", "SYS_PTRACE"),
                                      ("cap_net_admin", "NET_ADMIN")])
def test_a_missing_capability_is_named(tmp_path, cap, name):
    if subprocess.run(["which", "capsh"], capture_output=True).returncode:
        pytest.skip("capsh missing (Debian's libcap2-bin)")
    line = one_line(agent_in(f"capsh --drop={cap} -- -c 'AGENT'", tmp_path))
    assert f"add {name} to the container's securityContext.capabilities.add" in line
    assert not (tmp_path / "rec").exists() or not list((tmp_path / "rec").iterdir())


def test_tracefs_that_cannot_be_mounted_names_the_mount(tmp_path):
    # tracefs unmounted, and mount(8) failing: a container without the
    # host's tracefs and without the right to mount it
    line = one_line(agent_in("umount -l /sys/kernel/tracing 2>/dev/null; "
                             "mount --bind /bin/false \"$(command -v mount)\" && AGENT", tmp_path))
    assert "tracefs" in line and "/sys/kernel/tracing" in line and "hostPath" in line


def test_no_btf_is_one_line(tmp_path):
    line = one_line(agent_in("mount -t tmpfs none /sys/kernel/btf && AGENT", tmp_path))
    assert "BTF" in line and "/sys/kernel/btf/vmlinux" in line and "CONFIG_DEBUG_INFO_BTF" in line
