"""What rsttrace cannot set itself, as text ready to paste.

- a pod's `securityContext.sysctls` (keepalive is per namespace: a pod starts
  at the kernel default 7200 s whatever the node says; safe sysctls since
  Kubernetes 1.29, not allowed with hostNetwork);
- kube-proxy flags (it rewrites conntrack and IPVS values when it starts, so a
  node change it does not know about is undone at its next restart);
- (client pool settings come with the analysis's fixes, computed from the
  timeouts it observed).
"""

from __future__ import annotations

import math
import os

from rsttrace.remedy import keys as K
from rsttrace.remedy.model import Handover, Plan

KEEPALIVE_KEYS = (K.KEEPALIVE_TIME, K.KEEPALIVE_INTVL, K.KEEPALIVE_PROBES)


def pod_sysctls(values: dict[str, int]) -> str:
    lines = ["securityContext:", "  sysctls:"]
    for key in KEEPALIVE_KEYS:
        if key in values:
            lines += [f"  - name: {key}", f'    value: "{values[key]}"']
    return "\n".join(lines)


def kube_proxy_flags(values: dict[str, int], cores: int | None = None) -> list[str]:
    cores = cores or os.cpu_count() or 1
    flags = []
    for key, flag in ((K.IPVS_TCP, "--ipvs-tcp-timeout"), (K.IPVS_TCPFIN, "--ipvs-tcpfin-timeout"),
                      (K.IPVS_UDP, "--ipvs-udp-timeout"),
                      (K.CT_ESTABLISHED, "--conntrack-tcp-timeout-established")):
        if key in values:
            flags.append(f"{flag}={values[key]}s")
    if K.CT_MAX in values:
        # kube-proxy sets max = max(per_core * cores, min); ask for at least our value.
        flags.append(f"--conntrack-max-per-core={math.ceil(values[K.CT_MAX] / cores)}")
        flags.append(f"--conntrack-min={values[K.CT_MAX]}")
    return flags


def add_handovers(plan: Plan, *, cores: int | None = None) -> None:
    """Add the pod and kube-proxy hand-overs a plan implies, unless the
    analysis already handed over that kind of snippet."""
    have = {h.scope for h in plan.handovers}
    ka: dict[str, int] = {}
    node_vals: dict[str, int] = {}
    for c in plan.changes:
        if c.key in KEEPALIVE_KEYS:
            ka[c.key] = min(c.new, ka.get(c.key, c.new))
        if c.target.label == "init" or c.scope == "global":
            node_vals[c.key] = c.new
    if ka and "pod" not in have:
        plan.handovers.append(Handover(
            "pod", "pod spec (keepalive is per namespace; pods do not inherit the node's)",
            pod_sysctls(ka), "the same keepalive for every pod that talks through the node"))
    flags = kube_proxy_flags(node_vals, cores)
    if flags and "kube-proxy" not in have:
        plan.handovers.append(Handover(
            "kube-proxy", "kube-proxy flags (it resets these values when it starts)",
            " ".join(flags), "keep kube-proxy from undoing the node change"))
