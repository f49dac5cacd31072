"""Every metric `rsttrace export` serves: name, type, labels, meaning.

This list is the single definition: the collector builds its families
from it, the tests check that alert rules and the dashboard only use names
listed here, and monitoring/README.md documents each one.

Cardinality is bounded by construction: no label carries a flow, address
or port. `netns` takes at most `netns_cap` namespace names plus `other`
(see exporter/netns.py); `cause` the classifier's causes; the TCP state
labels the kernel's dozen states.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "rsttrace_"
# Labels of every series, before its own: the node the exporter runs on
# (rsttrace export/agent --node; NODE_NAME, else the host name), so the
# series of a DaemonSet's pods stay apart whatever the scrape adds.
COMMON_LABELS = ("node",)
OTHER_NETNS = "other"       # counters of namespaces past the cap
UNKNOWN_NETNS = "unknown"   # an event that named no namespace


@dataclass(frozen=True)
class MetricSpec:
    name: str                 # exposition name (counters end in _total)
    type: str                 # counter | gauge | info
    labels: tuple[str, ...]
    help: str

    @property
    def family(self) -> str:
        """The name prometheus-client's families take (no _total / _info)."""
        if self.type == "counter":
            return self.name.removesuffix("_total")
        if self.type == "info":
            return self.name.removesuffix("_info")
        return self.name


# ctx `ct` counter key -> metric (all cumulative in the kernel, summed over CPUs)
CT_COUNTERS = {
    "drop": "rsttrace_conntrack_drop_total",
    "early_drop": "rsttrace_conntrack_early_drop_total",
    "invalid": "rsttrace_conntrack_invalid_total",
    "insert_failed": "rsttrace_conntrack_insert_failed_total",
    "chaintoolong": "rsttrace_conntrack_chaintoolong_total",
    "search_restart": "rsttrace_conntrack_search_restart_total",
}

# ctx `sysctl` key -> metric (the timeouts that decide whether an idle flow survives)
SYSCTL_GAUGES = {
    "tcp_keepalive_time": "rsttrace_tcp_keepalive_time_seconds",
    "tcp_keepalive_intvl": "rsttrace_tcp_keepalive_interval_seconds",
    "tcp_keepalive_probes": "rsttrace_tcp_keepalive_probes",
    "nf_conntrack_tcp_timeout_established": "rsttrace_conntrack_tcp_timeout_established_seconds",
    "nf_conntrack_tcp_be_liberal": "rsttrace_conntrack_tcp_be_liberal",
}

METRICS: tuple[MetricSpec, ...] = (
    # resets, classified
    MetricSpec("rsttrace_resets_total", "counter", ("cause", "direction", "netns"),
               "TCP resets seen by the kernel, by root cause, direction (sent: this host's kernel "
               "sent it; recv: a local socket received it) and network namespace."),
    MetricSpec("rsttrace_reset_incidents_total", "counter", ("cause",),
               "Reset incidents by root cause: one per reset flow, however many local namespaces "
               "saw it (a router's sent reset and the client's received one are one incident)."),
    # conntrack, per namespace
    MetricSpec("rsttrace_conntrack_entries", "gauge", ("netns",),
               "Conntrack entries in the namespace (nf_conntrack_count)."),
    MetricSpec("rsttrace_conntrack_entries_limit", "gauge", ("netns",),
               "nf_conntrack_max as the namespace sees it (the limit is global; the count is per namespace)."),
    MetricSpec("rsttrace_conntrack_buckets", "gauge", ("netns",),
               "nf_conntrack_buckets (hash table size)."),
    *(MetricSpec(name, "counter", ("netns",),
                 f"Conntrack `{key}` counter of /proc/net/stat/nf_conntrack, summed over CPUs.")
      for key, name in CT_COUNTERS.items()),
    MetricSpec("rsttrace_netfilter_drops_total", "counter", ("netns",),
               "Packets freed with drop reason NETFILTER_DROP (skb:kfree_skb), any netfilter rule or conntrack."),
    MetricSpec("rsttrace_conntrack_table_full_logs_total", "counter", ("netns",),
               "Kernel log lines \"nf_conntrack: table full, dropping packet\" (rate-limited by the kernel)."),
    # TCP state
    MetricSpec("rsttrace_tcp_state_transitions_total", "counter", ("old_state", "new_state"),
               "TCP state transitions (sock:inet_sock_set_state), counted in a per-CPU BPF array."),
    MetricSpec("rsttrace_tcp_sockets", "gauge", ("netns",),
               "TCP sockets in the namespace (in use and time-wait, /proc/net/sockstat and sockstat6)."),
    # configuration
    MetricSpec("rsttrace_tcp_keepalive_time_seconds", "gauge", ("netns",),
               "net.ipv4.tcp_keepalive_time of the namespace (a per-socket TCP_KEEPIDLE overrides it)."),
    MetricSpec("rsttrace_tcp_keepalive_interval_seconds", "gauge", ("netns",),
               "net.ipv4.tcp_keepalive_intvl of the namespace."),
    MetricSpec("rsttrace_tcp_keepalive_probes", "gauge", ("netns",),
               "net.ipv4.tcp_keepalive_probes of the namespace."),
    MetricSpec("rsttrace_conntrack_tcp_timeout_established_seconds", "gauge", ("netns",),
               "net.netfilter.nf_conntrack_tcp_timeout_established of the namespace."),
    MetricSpec("rsttrace_conntrack_tcp_be_liberal", "gauge", ("netns",),
               "net.netfilter.nf_conntrack_tcp_be_liberal of the namespace (1: out-of-window is not INVALID)."),
    MetricSpec("rsttrace_ipvs_timeout_seconds", "gauge", ("netns", "protocol"),
               "IPVS idle timeouts (tcp, tcpfin, udp) of the namespace; absent where IPVS is not loaded."),
    MetricSpec("rsttrace_netns_nat", "gauge", ("netns",),
               "1 when the namespace has NAT rules (nftables/iptables nat table), else 0."),
    # the exporter itself
    MetricSpec("rsttrace_events_total", "counter", (),
               "Events read from the kernel's buffer."),
    MetricSpec("rsttrace_events_lost_total", "counter", (),
               "Events the kernel could not queue (buffer full): resets rsttrace did not see."),
    MetricSpec("rsttrace_backlog_events", "gauge", (),
               "Events read from the kernel and not yet classified: how far the counts lag behind "
               "a reset storm (they wait raw in a file, not in the kernel's buffer)."),
    MetricSpec("rsttrace_hook_available", "gauge", ("signal",),
               "1 when the signal's hook is attached on this kernel, 0 when not (rsttrace doctor says why)."),
    MetricSpec("rsttrace_netns_omitted", "gauge", (),
               "Namespaces in the last context snapshot that have no netns label of their own (over the cap)."),
    MetricSpec("rsttrace_context_timestamp_seconds", "gauge", (),
               "Unix time of the newest context snapshot (conntrack counters and sysctls)."),
    MetricSpec("rsttrace_build_info", "info", ("version", "kernel", "transport"),
               "The rsttrace version, the running kernel and the event transport."),
)

BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS}


def series_names() -> set[str]:
    """Every series name the exporter serves (no `_created` series: the
    collector gives none)."""
    return {m.name for m in METRICS}
