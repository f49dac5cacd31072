"""The DaemonSet's pod under podman: `rsttrace agent` in the image, with
the manifest's host namespaces, capabilities, mounts, environment, command
and memory limit. Resets made in private namespaces and through the lab
are counted in its metrics (labelled with the node), logged one JSON line
each, attributed to Kubernetes pods from the host's cgroups and pod-log
tree, and kept by its flight recorder in the node's directory, where
`rsttrace report` reads them; SIGTERM ends it cleanly. One agent serves
the module, in file order; the last test stops it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from daemonset import PODMAN_HOST
from podrun import Agent, Namespaces, derive_pod, get, memory_peak, vm_hwm_mb

from rsttrace import __version__
from rsttrace.lab.netns import inode, tcp_out_rsts
from rsttrace.tracer.pods import cgroup2_root
from rsttrace.schema.recording import read_recording

pytestmark = [pytest.mark.kernel, pytest.mark.container]

NODE = "node-" + uuid.uuid4().hex[:6]
RSS_BOUND_MB = 150


@pytest.fixture(scope="module")
def namespaces():
    # kept until the module ends: a namespace made after another is gone
    # may get its inode, and the agent keeps the first name it learned for
    # an inode
    ns = Namespaces()
    yield ns
    ns.cleanup()


@pytest.fixture(scope="module")
def agent(image, manifest, node_dirs):
    a = Agent(derive_pod(manifest, NODE, node_dirs))
    a.made = {}   # namespace -> (inode, resets it sent), for the report test
    yield a
    a.kill()


def until(pred, timeout: float = 15.0, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def lines_of(agent: Agent, ns: str) -> list[dict]:
    """The log's lines of resets sent or received in namespace `ns`."""
    ino = inode(ns)
    return [r for r in agent.records()
            if r.get("kind") == "reset" and ino in {(r.get(side) or {}).get("netns")
                                                    for side in ("sent", "received")}]


def test_probes_answer_and_the_start_is_reported(agent):
    for kind, (path, _port) in agent.pod.probes.items():
        assert get(agent.base + path)[0] == 200, kind
    start = "".join(agent.stderr)
    assert f"agent on node {NODE}" in start and "recording to /var/lib/rsttrace" in start


def test_doctor_in_the_pod_says_what_it_uses(agent):
    r = agent.exec("rsttrace", "doctor")
    assert r.returncode == 0, r.stderr
    facts = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in r.stdout.splitlines()
             if line.startswith("  ") and len(line.split(None, 1)) == 2}
    assert facts["access"].startswith("ok")
    assert facts["btf"] == "present (/sys/kernel/btf/vmlinux)"
    assert facts["tracefs"] == "tracefs mounted"      # the manifest's mount
    # the image's generic headers, linked under the running kernel's name
    headers = agent.exec("sh", "-c", "ls -d /usr/src/linux-headers-*-amd64").stdout.split()
    assert len(headers) == 1 and Path(headers[0]).name in facts["headers"]
    assert os.uname().release in facts["headers"]
    assert agent.exec("rsttrace", "--version").stdout.strip() == f"rsttrace {__version__}"


def test_resets_counted_with_the_node_and_logged_one_line_each(agent, namespaces):
    # made after the agent started: its name reaches the container through
    # the HostToContainer mount of /run/netns
    ns = namespaces.add("refuse")
    made = namespaces.refuse(ns, 200)
    sent = tcp_out_rsts(ns)
    assert made == sent == 200
    agent.made[ns] = (inode(ns), sent)
    got = until(lambda: agent.value("rsttrace_resets_total", direction="sent", netns=ns,
                                    node=NODE) == sent)
    assert got, agent.value("rsttrace_resets_total", netns=ns)
    assert agent.value("rsttrace_resets_total", direction="recv", netns=ns, node=NODE) == sent
    assert until(lambda: len(lines_of(agent, ns)) == sent)
    lines = lines_of(agent, ns)
    assert len(lines) == sent
    assert {r["node"] for r in lines} == {NODE} and {r["cause"] for r in lines} == {"no_listener"}
    assert {r["sent"]["netns_name"] for r in lines} == {ns}
    # every series carries the node
    assert all(dict(labels).get("node") == NODE for (_n, labels) in agent.scrape())


def _kubelet_cgroup(root: Path, parent: str, driver: str, uid: str) -> Path:
    """A container's cgroup as the kubelet makes it, below `parent`."""
    if driver == "systemd":
        u = uid.replace("-", "_")
        rel = (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/"
               f"cri-containerd-{uuid.uuid4().hex * 2}.scope")
    else:
        rel = f"kubepods/burstable/pod{uid}/{uuid.uuid4().hex * 2}"
    path = root / parent / rel
    path.mkdir(parents=True)
    return path


def test_resets_are_attributed_to_kubernetes_pods(agent, namespaces, node_dirs):
    """Item: pods. Real processes in kubelet-shaped cgroups of this host
    (both cgroup drivers) and the kubelet's pod-log directories; the agent
    in the container names each one's pod."""
    root = cgroup2_root()
    assert root is not None, "no cgroup v2 hierarchy on this host"
    parent = f"rsttrace-test-{uuid.uuid4().hex[:6]}"
    pods = {"systemd": ("default", "web-a", str(uuid.uuid4())),
            "cgroupfs": ("shop", "db-0", str(uuid.uuid4())),
            "unnamed": ("", "", str(uuid.uuid4()))}   # no log directory: UID only
    made_dirs = []
    try:
        for driver, (kns, name, uid) in pods.items():
            cg = _kubelet_cgroup(root, parent, "systemd" if driver == "unnamed" else driver, uid)
            made_dirs.append(cg)
            if name:
                (node_dirs["/var/log/pods"] / f"{kns}_{name}_{uid}" / "app").mkdir(parents=True)
            ns = namespaces.add(driver[:4])
            # the process enters the pod's cgroup, then connects from a namespace
            namespaces.refuse(ns, 5, prefix=("sh", "-c", f'echo $$ > "{cg}/cgroup.procs" && exec "$@"',
                                             "sh"))
            want = f"{kns}/{name}" if name else f"uid:{uid}"
            lines = until(lambda: [r for r in lines_of(agent, ns)
                                   if (r["received"] or {}).get("pod") == want], timeout=10)
            assert len(lines) == 5, (driver, ns, [r["received"] for r in lines_of(agent, ns)],
                                     agent.records()[-3:], get(agent.base + "/healthz"),
                                     agent.value("rsttrace_resets_total", netns=ns), agent.stderr)
    finally:
        for cg in made_dirs:
            for d in [cg, *cg.parents]:
                if d == root:
                    break
                try:
                    d.rmdir()
                except OSError:
                    pass


def test_the_memory_bound_holds_through_storms(agent, namespaces):
    """50,000 resets: every one counted, none lost. Then the issue's
    200,000: the RSS bound holds; on this shared 2-CPU machine the kernel's
    rings may overflow at that rate, and what is lost is counted, never
    silent."""
    idle_mb = vm_hwm_mb(agent.pid())
    limit = int(next(o for o in agent.pod.options if o.startswith("--memory=")).split("=")[1])
    for size in (50_000, 200_000):
        ns = namespaces.add(f"storm{size // 1000}k")
        lost_before = agent.value("rsttrace_events_lost_total")
        made = namespaces.refuse(ns, size, seconds=60)
        sent = tcp_out_rsts(ns)
        assert made == sent

        def counted():
            return agent.value("rsttrace_resets_total", direction="sent", netns=ns)

        def settled():
            # counts lag a storm (the agent keeps a backlog): wait until it is worked off
            if agent.value("rsttrace_backlog_events"):
                return False
            before = counted()
            time.sleep(1)
            return counted() == before
        assert until(settled, timeout=60)
        lost = agent.value("rsttrace_events_lost_total") - lost_before
        peak_mb = vm_hwm_mb(agent.pid())
        cgroup_peak, oom_kills = memory_peak(agent.pid())
        print(f"\nagent RSS {idle_mb:.1f} MB before, peak {peak_mb:.1f} MB after a storm of {sent} "
              f"resets ({counted():.0f} counted, {lost:.0f} events lost); container peak "
              f"{cgroup_peak / 2**20:.1f} MiB of its {limit / 2**20:.0f} MiB limit")
        assert peak_mb < RSS_BOUND_MB and oom_kills == 0
        if size == 50_000:
            assert counted() == sent and lost == 0
            agent.made[ns] = (inode(ns), sent)
        else:
            assert counted() == sent or lost > 0


def test_a_lab_scenario_is_diagnosed_in_the_pod(agent):
    from rsttrace.lab.scenarios import run_scenario
    from rsttrace.lab.topology import Lab

    with Lab(lock_wait_s=60) as lab:
        run = run_scenario(lab, "keepalive")
        assert run.reproduced, run.client
        hits = until(lambda: [r for r in lines_of(agent, lab.cli) if r["cause"] == "keepalive"],
                     timeout=20)
        assert hits, [r for r in agent.records() if r.get("kind") == "reset"][-5:]
        assert agent.value("rsttrace_reset_incidents_total", cause="keepalive", node=NODE) >= 1
        # the fix plan for the pods' namespaces, from inside the pod (read-only /proc/sys)
        plan = agent.exec("rsttrace", "fix", "--dry-run", "--observe", "0")
        assert plan.returncode == 0, plan.stderr
        assert lab.cli in plan.stdout or lab.node in plan.stdout, plan.stdout


def test_sigterm_ends_with_recordings_rsttrace_report_reads(agent, image, node_dirs, tmp_path):
    incidents = agent.value("rsttrace_reset_incidents_total")
    assert agent.stop() == 0, "".join(agent.stderr)
    # past the log's rate (the storm) the rest are counted by the line that
    # ends each second, and by the last one at the end: none vanish
    records = agent.records()
    logged = sum(1 for r in records if r.get("kind") == "reset")
    not_logged = sum(r["resets"] for r in records if r.get("kind") == "resets_not_logged")
    assert not_logged and logged + not_logged >= incidents, (logged, not_logged, incidents)
    files = sorted(node_dirs["/var/lib/rsttrace"].glob("*.jsonl"))
    assert files, "".join(agent.stderr)
    for f in files:
        assert f.stat().st_mode & 0o077 == 0, f      # 0600: pod names, addresses
        rec = read_recording(f)
        assert rec.header["node"] == NODE and rec.totals is not None and not rec.truncated, f
    # on the node: the host's rsttrace; and as copied out of the pod, the image's
    for f in files:
        r = subprocess.run([sys.executable, "-m", "rsttrace", "report", str(f), "-o",
                            str(tmp_path / f"{f.stem}.csv")], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
    rows = []
    for out in tmp_path.glob("*.csv"):
        with open(out, newline="") as fh:
            rows += list(csv.DictReader(fh))
    for ns, (ino, sent) in agent.made.items():
        got = sum(1 for row in rows if row["direction"] == "sent" and row["netns"] == str(ino))
        assert got == sent, (ns, got, sent)
    r = subprocess.run(["podman", "run", "--rm", *PODMAN_HOST, "--network=none",
                        "--mount", f"type=bind,source={files[0].parent},destination=/rec,ro",
                        image, "rsttrace", "report", f"/rec/{files[0].name}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "resets" in r.stdout, r.stderr


def test_the_log_is_json_lines_only(agent):
    # stdout is what a cluster's log agent collects: nothing but JSON lines
    for line in agent.stdout:
        json.loads(line)
