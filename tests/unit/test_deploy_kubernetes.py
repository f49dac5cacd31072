"""deploy/kubernetes: the base and each component render with
`kubectl kustomize`; every core object validates strictly against
Kubernetes' own schemas (kubernetes-validate, offline); the Prometheus
Operator's objects are checked for shape (their CRD schemas are not
available offline) and their rules by promtool; the generated manifests
match monitoring/; the DaemonSet says what the container tier runs."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib

import kubernetes_validate
import pytest
import yaml
from daemonset import (COMPONENTS, DEPLOY, ROOT, container, derive, expand, find, pod_spec,
                       quantity, render, without_capability, without_mount)

from rsttrace import __version__
from rsttrace.exporter.server import DEFAULT_PORT
from rsttrace.remedy.paths import Paths

# the oldest release whose schema has every field the DaemonSet uses
# (securityContext.appArmorProfile came in 1.30), and the newest bundled
OLDEST, NEWEST = "1.30.0", kubernetes_validate.utils.latest_version()
CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"),
             ("monitoring.coreos.com/v1", "PrometheusRule")}
VARIANTS = [(), *((c,) for c in COMPONENTS), tuple(COMPONENTS)]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render()


def core(docs):
    return [d for d in docs if (d["apiVersion"], d["kind"]) not in CRD_KINDS]


def validate(doc: dict, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("components", VARIANTS, ids=lambda c: "+".join(c) or "base")
@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_every_core_object_validates_strictly(components, version):
    docs = render(components)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "DaemonSet", "Service", "ConfigMap", "PodMonitor",
            "PrometheusRule"} <= kinds
    for doc in core(docs):
        validate(doc, version)
    assert all(d["metadata"].get("namespace") == "rsttrace" for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize("path, value", [
    (("spec", "template", "spec", "hostPid"), True),                      # misspelt field
    (("spec", "template", "spec", "containers", 0, "securityContext", "privileged"), "yes"),
    (("spec", "template", "spec", "tolerations", 0, "operator"), 7),
])
def test_strict_validation_rejects_a_broken_daemonset(base, path, value):
    ds = copy.deepcopy(find(base, "DaemonSet"))
    node = ds
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(ds, NEWEST)


def test_generated_manifests_match_monitoring():
    spec = importlib.util.spec_from_file_location("generate", DEPLOY / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for path, text in gen.render().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} differs from what generate.py makes of monitoring/: "
            "run `make manifests`")


def test_prometheusrule_carries_the_rules_file(base, tmp_path):
    rule = find(base, "PrometheusRule")
    source = yaml.safe_load((ROOT / "monitoring" / "rsttrace.rules.yml").read_text())
    assert rule["spec"] == {"groups": source["groups"]}
    # the shape the Prometheus Operator's CRD takes
    for g in rule["spec"]["groups"]:
        assert set(g) <= {"name", "interval", "limit", "query_offset", "labels", "rules"}
        for r in g["rules"]:
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str)
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels",
                              "annotations"}
            assert all(isinstance(v, str) for v in {**r.get("labels", {}),
                                                    **r.get("annotations", {})}.values())
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: scripts/install.sh installs Debian's prometheus")
    f = tmp_path / "spec.yml"
    f.write_text(yaml.safe_dump(rule["spec"]))
    p = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_podmonitor_and_service_reach_the_metrics_port(base):
    pm, svc = find(base, "PodMonitor"), find(base, "Service")
    labels = find(base, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert set(pm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(pm["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector",
                               "jobLabel", "podTargetLabels"}
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container(base)["ports"]}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in ports and ep["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", ep["interval"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] in ports


def test_dashboard_configmap_carries_the_dashboard(base):
    cm = find(base, "ConfigMap", "rsttrace-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = (ROOT / "monitoring" / "grafana-dashboard.json").read_text()
    assert cm["data"] == {"rsttrace.json": text}


def test_dashboard_filters_every_query_by_node():
    d = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in d["templating"]["list"]}
    node = variables["node"]
    assert node["query"]["query"] == "label_values(rsttrace_build_info, node)"
    # All must also match series without the label (rsttrace export off Kubernetes)
    assert node["includeAll"] and node["allValue"] == ".*"
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in variables.values() if isinstance(v.get("query"), dict)]
    for e in exprs:
        for selector in re.findall(r"\{[^}]*\}", e):
            if "$instance" in selector:
                assert 'node=~"$node"' in selector, e


def test_daemonset_runs_the_agent_of_this_version(base):
    spec, c = pod_spec(base), container(base)
    assert c["image"] == f"localhost/rsttrace:{__version__}"
    assert c["command"] == ["rsttrace", "agent"]
    assert spec["hostPID"] and spec["hostNetwork"]
    assert spec["tolerations"] == [{"operator": "Exists"}]   # every taint
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == DEFAULT_PORT
    listen = c["args"][c["args"].index("--listen") + 1]
    assert listen.endswith(f":{DEFAULT_PORT}")
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    res = c["resources"]
    assert quantity(res["requests"]["memory"]) <= quantity(res["limits"]["memory"])


def test_only_the_recordings_and_scratch_are_writable(base):
    c = container(base)
    volumes = {v["name"]: v for v in pod_spec(base)["volumes"]}
    writable = {m["name"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"recordings", "modules", "tmp"}
    assert "hostPath" in volumes["recordings"] and "emptyDir" in volumes["modules"]
    assert "emptyDir" in volumes["tmp"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {"/sys/kernel/tracing", "/sys/fs/cgroup", "/run/netns",
            "/var/log/pods", "/var/lib/rsttrace"} <= set(mounts)
    assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"


def test_privileged_component_replaces_the_capabilities():
    c = container(render(("privileged",)))
    assert c["securityContext"] == {"privileged": True, "readOnlyRootFilesystem": True}


def test_host_fix_mounts_where_fix_persists():
    docs = render(("host-fix",))
    c = container(docs)
    paths = Paths.from_env({})
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for directory in (paths.sysctl_dir, paths.modprobe_dir, paths.state_dir):
        assert not mounts[str(directory)].get("readOnly")
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes[mounts["/etc/sysctl.d"]["name"]]["hostPath"]["path"] == "/etc/sysctl.d"
    # writing the node's /proc/sys takes a privileged container
    assert c["securityContext"]["privileged"] is True


# -- the podman command the container tier derives --------------------------

def test_derived_podman_command_follows_the_manifest(base):
    pod = derive(base, node="node-a", host_ip="127.0.0.1", create_dirs=False)
    assert pod.argv == ["rsttrace", "agent", "--listen", f"127.0.0.1:{DEFAULT_PORT}"]
    assert pod.env["NODE_NAME"] == "node-a"
    assert {"--pid=host", "--network=host", "--cap-drop=all", "--read-only"} <= set(pod.options)
    adds = {o.split("=", 1)[1] for o in pod.options if o.startswith("--cap-add=")}
    assert adds == set(container(base)["securityContext"]["capabilities"]["add"])
    mounts = [pod.options[i + 1] for i, o in enumerate(pod.options) if o == "--mount"]
    for m in container(base)["volumeMounts"]:
        (opt,) = [x for x in mounts if f"destination={m['mountPath']}," in x + ","]
        assert (",ro" in opt) == bool(m.get("readOnly"))
    assert any("destination=/run/netns" in m and "bind-propagation=rslave" in m for m in mounts)
    assert pod.probes["readinessProbe"] == ("/readyz", DEFAULT_PORT)
    limit = quantity(container(base)["resources"]["limits"]["memory"])
    assert f"--memory={limit}" in pod.options


def test_misconfigurations_leave_out_what_they_name(base):
    pod = derive(without_mount(base, "tracefs"), node="n", host_ip="127.0.0.1", create_dirs=False)
    assert not any("/sys/kernel/tracing" in o for o in pod.options)
    pod = derive(without_capability(base, "SYS_PTRACE"), node="n", host_ip="127.0.0.1",
                 create_dirs=False)
    assert "--cap-add=SYS_PTRACE" not in pod.options and "--cap-add=SYS_ADMIN" in pod.options


def test_a_pod_field_the_derivation_does_not_know_fails_it(base):
    docs = copy.deepcopy(base)
    pod_spec(docs)["hostIPC"] = True
    with pytest.raises(NotImplementedError, match="hostIPC"):
        derive(docs, node="n", host_ip="127.0.0.1", create_dirs=False)


def test_expand_follows_kubernetes():
    env = {"HOST_IP": "10.0.0.5"}
    assert expand("$(HOST_IP):9471", env) == "10.0.0.5:9471"
    assert expand("$$(HOST_IP)", env) == "$(HOST_IP)"
    assert expand("$(UNSET)", env) == "$(UNSET)"


# -- the image's inputs -----------------------------------------------------

def test_image_constraints_satisfy_pyproject():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    pins = {}
    for line in (ROOT / "deploy" / "image" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        assert canonicalize_name(dep.name) in pins, f"{dep.name} is not pinned for the image"
        assert dep.specifier.contains(pins[canonicalize_name(dep.name)]), dep


def test_image_context_lets_in_every_package_folder():
    allowed = {line[1:] for line in (ROOT / "deploy" / "image" / "Containerfile.dockerignore")
               .read_text().splitlines() if line.startswith("!")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {f.split("/")[0] for f in project["tool"]["setuptools"]["package-dir"].values()}
    assert folders | {"pyproject.toml", project["project"]["readme"], "deploy/image"} == allowed
