"""The prometheus-client collector: metric families built at scrape time
from a copy of the state (exporter/state.py) and, for what the kernel
counts itself (TCP state transitions, lost events), a read of the BPF maps
at that moment. Between scrapes nothing is formatted or allocated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily,
                                    Metric)
from prometheus_client.registry import Collector

from .catalog import BY_NAME, COMMON_LABELS, CT_COUNTERS, SYSCTL_GAUGES
from .state import ExportState, View


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def label_text(value: str) -> str:
    """A label value as valid UTF-8 text. Names read from the host (a
    /run/netns entry, a process name) may hold bytes that are not UTF-8,
    kept as lone surrogates (surrogateescape); the exposition would fail
    to encode them, and with them the whole scrape. Such a byte is shown
    as its escape (`\\xff`)."""
    if value.isascii():
        return value
    try:
        value.encode()
        return value
    except UnicodeEncodeError:
        pass
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:      # a lone surrogate that is no escaped byte
        raw = value.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


class Families:
    """One family per catalog entry, created on first use; every series
    carries the `node` label (COMMON_LABELS) first."""

    def __init__(self, node: str) -> None:
        self._f: dict[str, Metric] = {}
        self.node = label_text(node)

    def get(self, name: str) -> Metric:
        fam = self._f.get(name)
        if fam is None:
            spec = BY_NAME[name]
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                   "info": InfoMetricFamily}[spec.type]
            if spec.type == "info":
                fam = cls(spec.family, spec.help)
            else:
                fam = cls(spec.family, spec.help, labels=[*COMMON_LABELS, *spec.labels])
            self._f[name] = fam
        return fam

    def add(self, name: str, labels: list[str], value: float) -> None:
        self.get(name).add_metric([self.node, *map(label_text, labels)], value)

    def info(self, name: str, values: dict[str, str]) -> None:
        self.get(name).add_metric([], {"node": self.node,
                                       **{k: label_text(v) for k, v in values.items()}})

    def all(self) -> list[Metric]:
        return list(self._f.values())


def build_families(view: View, stats: dict[str, int] | None,
                   transitions: dict[tuple[str, str], int] | None) -> list[Metric]:
    """Every family of one scrape (pure: tests call it with a fake view)."""
    f = Families(view.node)
    for (cause, direction, netns), n in sorted(view.resets.items()):
        f.add("rsttrace_resets_total", [cause, direction, netns], n)
    f.get("rsttrace_resets_total")   # present (empty) before the first reset
    for cause, n in view.incidents.items():
        f.add("rsttrace_reset_incidents_total", [cause], n)
    for netns, n in sorted(view.nf_drops.items()):
        f.add("rsttrace_netfilter_drops_total", [netns], n)
    for netns, n in sorted(view.full_logs.items()):
        f.add("rsttrace_conntrack_table_full_logs_total", [netns], n)

    for label, ns in view.namespaces:
        ct = ns.get("ct")
        if isinstance(ct, dict):
            for key, metric in (("count", "rsttrace_conntrack_entries"),
                                ("max", "rsttrace_conntrack_entries_limit"),
                                ("buckets", "rsttrace_conntrack_buckets")):
                v = _num(ct.get(key))
                if v is not None:
                    f.add(metric, [label], v)
            for key, metric in CT_COUNTERS.items():
                v = _num(ct.get(key))
                if v is not None:
                    f.add(metric, [label], v)
        sysctl = ns.get("sysctl") or {}
        for key, metric in SYSCTL_GAUGES.items():
            v = _num(sysctl.get(key))
            if v is not None:
                f.add(metric, [label], v)
        ipvs = ns.get("ipvs")
        if isinstance(ipvs, dict):
            for proto in ("tcp", "tcpfin", "udp"):
                v = _num(ipvs.get(proto))
                if v is not None:
                    f.add("rsttrace_ipvs_timeout_seconds", [label, proto], v)
        socks = _num(ns.get("tcp_sockets"))
        if socks is not None:
            f.add("rsttrace_tcp_sockets", [label], socks)
        if isinstance(ns.get("nat"), bool):
            f.add("rsttrace_netns_nat", [label], 1.0 if ns["nat"] else 0.0)
    f.add("rsttrace_netns_omitted", [], view.omitted)
    if view.ctx_t is not None:
        f.add("rsttrace_context_timestamp_seconds", [], view.ctx_t)

    for (old, new), n in sorted((transitions or {}).items()):
        f.add("rsttrace_tcp_state_transitions_total", [old, new], n)
    if stats is not None:
        f.add("rsttrace_events_total", [], stats.get("events", 0))
        f.add("rsttrace_events_lost_total", [], stats.get("lost", 0))
        if "backlog" in stats:
            f.add("rsttrace_backlog_events", [], stats["backlog"])
    for signal, hook in sorted((view.header.get("plan") or {}).items()):
        if isinstance(hook, dict):
            f.add("rsttrace_hook_available", [signal], 1.0 if hook.get("available") else 0.0)
    h = view.header
    f.info("rsttrace_build_info", {
        "version": str(h.get("tool", "")), "kernel": str(h.get("kernel", "")),
        "transport": str(h.get("transport", "replay"))})
    return f.all()


class RsttraceCollector(Collector):
    def __init__(self, state: ExportState, source: Any = None,
                 on_error: Callable[[Exception], None] | None = None):
        self.state = state
        self.source = source
        self.on_error = on_error

    def _kernel(self) -> tuple[dict[str, int] | None, dict[tuple[str, str], int] | None]:
        if self.source is None:
            return None, None
        try:
            stats = self.source.stats()
            read = getattr(self.source, "tcp_transitions", None)
            return stats, (read() if read is not None else None)
        except Exception as e:   # a map read failing must not fail the whole scrape
            if self.on_error:
                self.on_error(e)
            return None, None

    def collect(self) -> Iterator[Metric]:
        stats, transitions = self._kernel()
        yield from build_families(self.state.view(), stats, transitions)
