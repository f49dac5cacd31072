"""Running the DaemonSet's pod under podman on this machine (the options
derived from the rendered manifest by tests/daemonset.py), reading its
probes, metrics, log lines and memory, and throwaway namespaces to make
resets in."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from daemonset import Pod, derive
from resetloop import CONNECT_MANY
from scrape import get, scrape

PODMAN = shutil.which("podman")
HOST_IP = "127.0.0.1"   # status.hostIP: the agent listens on loopback only



def port_free(port: int) -> bool:
    """Whether a server could listen on `port` (connections of an earlier
    one waiting in TIME_WAIT do not stop it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST_IP, port))
        except OSError:
            return False
    return True


class Running:
    """One container of the pod: its stdout and stderr lines gathered by
    threads, ended with SIGTERM and the pod's grace period (podman stop)."""

    def __init__(self, pod: Pod, argv: list[str] | None = None, tag: str = "ct",
                 extra: tuple[str, ...] = ()):
        self.pod = pod
        self.name = f"rsttrace-{tag}-{uuid.uuid4().hex[:8]}"
        self.proc = subprocess.Popen(pod.run_argv(self.name, argv=argv, extra=extra),
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     errors="backslashreplace")
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(s, into), daemon=True)
                         for s, into in ((self.proc.stdout, self.stdout),
                                         (self.proc.stderr, self.stderr))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def stop(self) -> int:
        if self.proc.poll() is None:
            subprocess.run([PODMAN, "stop", "-t", str(self.pod.grace_s), self.name],
                           capture_output=True, timeout=self.pod.grace_s + 30)
        return self.wait(30)

    def kill(self) -> None:
        subprocess.run([PODMAN, "rm", "-f", self.name], capture_output=True, timeout=60)
        if self.proc.poll() is None:
            self.proc.kill()

    def exec(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`podman exec`: what `kubectl exec ds/rsttrace -- ...` is on a node."""
        return subprocess.run([PODMAN, "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=timeout)

    def pid(self) -> int:
        """The container's process as the host sees it."""
        out = subprocess.run([PODMAN, "inspect", "-f", "{{.State.Pid}}", self.name],
                             capture_output=True, text=True, timeout=30).stdout
        return int(out)


class Agent(Running):
    """The DaemonSet's container running `rsttrace agent`."""

    def __init__(self, pod: Pod):
        port = pod.probes["readinessProbe"][1]
        assert port_free(port), (f"port {port} (the manifest's metrics port) is taken on "
                                 f"{HOST_IP}: stop what listens there")
        super().__init__(pod, tag="agent")
        self.base = f"http://{HOST_IP}:{port}"
        self.ready_s = self._until_ready(90)

    def _until_ready(self, timeout: float) -> float:
        """As the kubelet does: the startup probe, then readiness."""
        t0 = time.monotonic()
        for kind in ("startupProbe", "readinessProbe"):
            path = self.pod.probes[kind][0]
            while get(self.base + path, timeout=2)[0] != 200:
                assert self.proc.poll() is None, "".join(self.stderr)
                assert time.monotonic() - t0 < timeout, f"{kind} {path} not 200: {self.stderr}"
                time.sleep(0.2)
        return time.monotonic() - t0

    def records(self) -> list[dict]:
        return [json.loads(line) for line in list(self.stdout)]

    def scrape(self) -> dict[tuple[str, tuple], float]:
        return scrape(self.base)

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name` over the series whose labels include `labels`."""
        return sum(v for (n, ls), v in self.scrape().items()
                   if n == name and labels.items() <= dict(ls).items())


def memory_peak(pid: int) -> tuple[int, int]:
    """The peak memory of the cgroup `pid` is in (the whole container: the
    agent, the short-lived process that compiles its programs, the page
    cache of what it reads and writes) and how many of its processes the
    kernel killed for want of memory, cgroup v2 or v1. Reaching the limit
    alone is no failure: the kernel reclaims page cache first."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        num, ctrls, path = line.split(":", 2)
        if num == "0" and Path(f"/sys/fs/cgroup{path}/memory.peak").exists():
            base = Path(f"/sys/fs/cgroup{path}")
            events = dict(x.split() for x in (base / "memory.events").read_text().splitlines())
            return int((base / "memory.peak").read_text()), int(events.get("oom_kill", 0))
        if "memory" in ctrls.split(","):
            base = Path(f"/sys/fs/cgroup/memory{path}")
            oom = dict(x.split() for x in (base / "memory.oom_control").read_text().splitlines())
            return (int((base / "memory.max_usage_in_bytes").read_text()),
                    int(oom.get("oom_kill", 0)))
    raise AssertionError(f"no memory cgroup for {pid}")


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class Namespaces:
    """Throwaway network namespaces (prefix rtct-), joined to nothing."""

    def __init__(self):
        self.tag = "rtct-" + uuid.uuid4().hex[:6]
        self.names: list[str] = []

    def add(self, short: str) -> str:
        name = f"{self.tag}-{short}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return name

    def refuse(self, name: str, n: int, seconds: float = 30, prefix: tuple[str, ...] = ()) -> int:
        """Up to `n` connects to a closed port on `name`'s loopback, each
        answered by a reset; `prefix` runs before `ip netns exec` (e.g. to
        enter a cgroup). Returns how many were made."""
        p = subprocess.run([*prefix, "ip", "netns", "exec", name, "python3", "-c", CONNECT_MANY,
                            str(n), str(seconds)], capture_output=True, text=True,
                           timeout=seconds + 30, check=True)
        return int(p.stdout)

    def cleanup(self) -> None:
        for name in self.names:
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def derive_pod(docs: list[dict], node: str, node_dirs: dict[str, Path]) -> Pod:
    return derive(docs, node=node, host_ip=HOST_IP,
                  host_paths={k: str(v) for k, v in node_dirs.items()})


def only_line(run: Running) -> str:
    """A failed start's stderr, which must be one line."""
    lines = [line for line in run.stderr if line.strip()]
    assert len(lines) == 1, "".join(run.stderr)
    return lines[0].strip()
