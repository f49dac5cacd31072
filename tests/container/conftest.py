"""Container tier: the image `make image` builds, run under podman as the
DaemonSet of deploy/kubernetes runs it. The podman options come from the
rendered manifest (tests/daemonset.py), never from a copy kept here; a
test's directories stand in only for the node paths the agent writes or a
test fills (recordings, the pods' log tree). Root, like the kernel tier:
real BPF, real namespaces, real resets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from daemonset import container, render
from podrun import PODMAN


@pytest.fixture(scope="session")
def manifest() -> list[dict]:
    return render()


@pytest.fixture(scope="session")
def image(manifest) -> str:
    if PODMAN is None:
        pytest.skip("podman is not installed (make install-test installs podman, runc, mmdebstrap)")
    name = container(manifest)["image"]
    if subprocess.run([PODMAN, "image", "exists", name]).returncode != 0:
        pytest.fail(f"no image {name}: build it with `make image`")
    return name


@pytest.fixture(scope="module")
def node_dirs(tmp_path_factory) -> dict[str, Path]:
    """The node paths a test writes or fills: the recordings and the pods'
    log tree (the kubelet's /var/log/pods)."""
    base = tmp_path_factory.mktemp("node")
    dirs = {"/var/lib/rsttrace": base / "var-lib-rsttrace", "/var/log/pods": base / "var-log-pods"}
    for d in dirs.values():
        d.mkdir(mode=0o755)
    return dirs
