"""The DaemonSet's pod misconfigured the way a user would do it: a host
mount or a capability taken out of the manifest, which is then derived
and run as before. The agent either copes (it mounts tracefs itself where
the runtime lets it) or ends at once with exit status 2 and ONE line that
names what to add. What this machine cannot show is stood in for, and said
so: a kernel without BTF by an empty /sys/kernel/btf, a runtime whose
AppArmor profile refuses mounts (this kernel has no AppArmor) by a seccomp
profile that refuses them."""

from __future__ import annotations

import errno
import json
import uuid
from pathlib import Path

import pytest
from daemonset import without_capability, without_mount
from podrun import Agent, Running, derive_pod, only_line

from rsttrace.tracer.access import NEEDS

pytestmark = [pytest.mark.kernel, pytest.mark.container]

NODE = "node-" + uuid.uuid4().hex[:6]
# podman's default profile: the manifest's seccompProfile RuntimeDefault
PODMAN_SECCOMP = Path("/usr/share/containers/seccomp.json")
MOUNT_CALLS = ("mount", "fsopen", "fsconfig", "fsmount", "move_mount", "open_tree")


def fails_with_one_line(pod, extra: tuple[str, ...] = ()) -> str:
    run = Running(pod, tag="bad", extra=extra)
    try:
        rc = run.wait(120)
    finally:
        run.kill()
    assert rc == 2, "".join(run.stderr)
    assert not run.stdout, run.stdout    # stdout is the reset log: nothing there
    return only_line(run)


def test_without_the_tracefs_mount_the_agent_mounts_it(image, manifest, node_dirs):
    pod = derive_pod(without_mount(manifest, "tracefs"), NODE, node_dirs)
    assert not any("/sys/kernel/tracing" in o for o in pod.options)
    agent = Agent(pod)     # ready: attached
    try:
        mounts = agent.exec("cat", "/proc/self/mountinfo").stdout.splitlines()
        assert [m for m in mounts if " /sys/kernel/tracing " in m and " - tracefs " in m]
    finally:
        assert agent.stop() == 0, "".join(agent.stderr)


def test_without_tracefs_where_mounts_are_refused_one_line_names_the_mount(
        image, manifest, node_dirs, tmp_path):
    profile = json.loads(PODMAN_SECCOMP.read_text())
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n not in MOUNT_CALLS]
    profile["syscalls"].append({"names": list(MOUNT_CALLS), "action": "SCMP_ACT_ERRNO",
                                "errnoRet": errno.EACCES})
    refusing = tmp_path / "seccomp-no-mount.json"
    refusing.write_text(json.dumps(profile))
    pod = derive_pod(without_mount(manifest, "tracefs"), NODE, node_dirs)
    line = fails_with_one_line(pod, ("--security-opt", f"seccomp={refusing}"))
    assert line.startswith("rsttrace: tracefs is not mounted at /sys/kernel/tracing and mounting it failed")
    assert "mount the host's /sys/kernel/tracing into the container (read-only)" in line


def test_without_btf_one_line_names_it(image, manifest, node_dirs):
    # an empty /sys/kernel/btf: what a kernel built without BTF shows
    pod = derive_pod(manifest, NODE, node_dirs)
    line = fails_with_one_line(pod, ("--mount", "type=tmpfs,destination=/sys/kernel/btf,notmpcopyup"))
    assert line.startswith("rsttrace: no BTF at /sys/kernel/btf/vmlinux")
    assert "CONFIG_DEBUG_INFO_BTF" in line and "mount the host's /sys/kernel/btf read-only" in line


@pytest.mark.parametrize("cap", [n.cap for n in NEEDS])
def test_a_missing_capability_is_named_in_one_line(image, manifest, node_dirs, cap):
    pod = derive_pod(without_capability(manifest, cap), NODE, node_dirs)
    line = fails_with_one_line(pod)
    assert line.startswith(f"rsttrace: tracing needs the capability {cap} to ")
    assert line.endswith(f"add {cap} to the container's securityContext.capabilities.add "
                         "(or run it privileged)")
