"""The host-fix component: `rsttrace fix` in the pod applies to the node
and to a pod's namespace, persists node-wide values in the node's
/etc/sysctl.d (a test directory stands in for it), and rolls back. The
node's own value is changed for a moment and always put back."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from daemonset import derive, render
from podrun import HOST_IP, Agent, Namespaces

pytestmark = [pytest.mark.kernel, pytest.mark.container]

KEY = "net.ipv4.tcp_keepalive_time"
PROC = Path("/proc/sys") / KEY.replace(".", "/")


def ns_value(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", str(PROC)], capture_output=True,
                         text=True, check=True).stdout
    return int(out)


@pytest.fixture
def fixer(image, tmp_path):
    dirs = {p: tmp_path / p.strip("/").replace("/", "-")
            for p in ("/var/lib/rsttrace", "/var/log/pods", "/etc/sysctl.d", "/etc/modprobe.d")}
    for d in dirs.values():
        d.mkdir()
    pod = derive(render(("host-fix",)), node="node-" + uuid.uuid4().hex[:6], host_ip=HOST_IP,
                 host_paths={k: str(v) for k, v in dirs.items()})
    before = int(PROC.read_text())
    agent = Agent(pod)
    ns = Namespaces()
    try:
        yield agent, ns, dirs
    finally:
        agent.stop()
        ns.cleanup()
        if int(PROC.read_text()) != before:
            PROC.write_text(str(before))


def test_fix_in_the_pod_applies_persists_and_rolls_back(fixer):
    agent, namespaces, dirs = fixer
    node_before = int(PROC.read_text())
    pod_ns = namespaces.add("pod")
    # a pod's namespace: applied, not persisted (its lasting form is the
    # pod's securityContext.sysctls, which the plan hands over)
    r = agent.exec("rsttrace", "fix", "--netns", pod_ns, "--set", f"{KEY}=100", "--yes",
                   "--observe", "0", "--no-persist")
    assert r.returncode == 0, r.stderr
    assert ns_value(pod_ns) == 100 and "securityContext" in r.stdout
    r = agent.exec("rsttrace", "fix", "--rollback", "--yes")
    assert r.returncode == 0 and ns_value(pod_ns) == 7200, r.stderr
    # the node: applied and persisted in its /etc/sysctl.d, then undone
    r = agent.exec("rsttrace", "fix", "--set", f"{KEY}={node_before - 1}", "--yes", "--observe", "0")
    assert r.returncode == 0, r.stderr
    assert int(PROC.read_text()) == node_before - 1
    conf = dirs["/etc/sysctl.d"] / "99-rsttrace.conf"
    assert f"{KEY} = {node_before - 1}" in conf.read_text()
    assert (dirs["/var/lib/rsttrace"] / "journal.json").exists()     # the node's journal
    r = agent.exec("rsttrace", "fix", "--rollback", "--yes")
    assert r.returncode == 0, r.stderr
    assert int(PROC.read_text()) == node_before and not conf.exists()
