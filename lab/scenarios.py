"""Each root cause reproduced for real in the lab, with short timeouts.

A scenario sets the node up, runs the MySQL client in the client namespace,
puts the node back, and returns a `ScenarioRun`: what the client saw
(verbatim), which flows are the scenario's, and what the diagnosis must say.
The timings are seconds instead of the field's minutes and hours; the
mechanism is the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rsttrace.lab.abortproxy import KILL_MARKER
from rsttrace.lab.topology import (BACKEND, CLIENT, CLOSED_PORT, FW_TABLE, GATEWAY_IDLE_S, MYSQL_PORT,
                                   PROXY_IDLE_CLOSE_S, PROXY_PORT, REMOTE_DB, VIP, Lab)

CT_ESTABLISHED_S = 2     # the node forgets an idle flow after this
IDLE_PAUSE_S = 4.0       # the pool's idle time, above that timeout
KEEPALIVE_FIX = {"idle": 1, "intvl": 1, "cnt": 3}  # probes below the timeout
# keepalive_pool: the pool leaves keepalive timing to its namespace, so the
# fix is the namespace's tcp_keepalive_time, which is whole seconds >= 1. The
# analysis asks for half the timeout (3 s here): one answered probe every 3 s
# refreshes the entry well before 6 s, and the 8 s pause still outlasts the
# entry when nothing probes.
POOL_CT_ESTABLISHED_S = 6
POOL_IDLE_PAUSE_S = 8.0
CT_MAX_FULL = 6          # global nf_conntrack_max while the table is "full"
FULL_CONNECTS = 12
# server_idle: MariaDB closes sessions idle past wait_timeout (whole seconds,
# at least 1); the pool uses its connections after a longer pause. The
# control's pool closes connections idle past POOL_MAX_IDLE_S first.
SERVER_WAIT_TIMEOUT_S = 1
SERVER_IDLE_PAUSE_S = 1.5
POOL_MAX_IDLE_S = 0.5
# peer_reset: the proxy refuses a query carrying its KILL_MARKER by aborting
# the connection, used again this soon (not idle)
PEER_RESET_PAUSE_S = 0.2
# firewall_reject: a rule on the node (table FW_TABLE) rejects the client's
# connects to the backend with a reset while MariaDB listens.
# gateway_idle: three connections through the gateway (GATEWAY_IDLE_S),
# each used again after its own pause, all above the gateway's timeout
# (three, so that the analysis can infer it); the control's keepalive
# probes every second, below it.
GATEWAY_PAUSES = (2.2, 2.4, 2.6)
GATEWAY_KEEPALIVE = {"idle": 1, "intvl": 1, "cnt": 3}


@dataclass(frozen=True)
class Expect:
    """What the diagnosis of a scenario's resets must say."""
    cause: str | None              # None: a control, no reset expected
    sender: str | None = None      # which lab namespace sends the reset: cli/node/db
    service_port: int = MYSQL_PORT
    idle_s: float | None = None    # the client's silence before the reset
    keepalive: bool | None = None  # SO_KEEPALIVE on the reset client socket
    fix_hint: str = ""
    server: str = VIP              # the address the client connects to


@dataclass
class ScenarioRun:
    name: str
    title: str
    expect: Expect
    client: dict[str, Any]
    t_start: float
    t_end: float
    node_ct_delta: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def flows(self) -> list[tuple[str, int]]:
        """The client tuples (addr, port) the scenario's pool used."""
        return [(c["laddr"], c["lport"]) for c in self.client["conns"] if c.get("lport")]

    @property
    def errors(self) -> list[str]:
        return [c["error"] for c in self.client["conns"] if c.get("error")]

    @property
    def reproduced(self) -> bool:
        """The client saw what the cause does (or, for a control, saw nothing)."""
        return bool(self.errors) == (self.expect.cause is not None)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    expect: Expect
    run: Callable[[Lab], tuple[dict[str, Any], list[str]]]


def _keepalive(lab: Lab, fixed: bool) -> tuple[dict[str, Any], list[str]]:
    lab.set_node_sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", CT_ESTABLISHED_S)
    spec: dict[str, Any] = {"action": "idle_pool", "pool": 2, "pause_s": IDLE_PAUSE_S}
    if fixed:
        spec["keepalive"] = KEEPALIVE_FIX
    return lab.client(spec), [f"node conntrack established timeout {CT_ESTABLISHED_S} s, "
                              f"pool idle {IDLE_PAUSE_S:g} s"]


def _keepalive_pool(lab: Lab) -> tuple[dict[str, Any], list[str]]:
    """SO_KEEPALIVE on, no per-socket times: the client namespace's
    tcp_keepalive_time decides, and the lab never resets it, so a fix applied
    there (`rsttrace --fix --netns <client>`) shows in the next run."""
    lab.set_node_sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", POOL_CT_ESTABLISHED_S)
    ka_time = lab.client_sysctl("net.ipv4.tcp_keepalive_time")
    rep = lab.client({"action": "idle_pool", "pool": 2, "pause_s": POOL_IDLE_PAUSE_S,
                      "keepalive": True})
    return rep, [f"node conntrack established timeout {POOL_CT_ESTABLISHED_S} s, pool idle "
                 f"{POOL_IDLE_PAUSE_S:g} s, SO_KEEPALIVE on with the client namespace's "
                 f"tcp_keepalive_time {ka_time} s"]


def _conntrack_full(lab: Lab) -> tuple[dict[str, Any], list[str]]:
    lab.set_global_sysctl("net.netfilter.nf_conntrack_max", CT_MAX_FULL)
    try:
        # A pool-less client: one new connection per request, each held.
        rep = lab.client({"action": "connect_many", "count": FULL_CONNECTS, "connect_timeout": 1,
                          "deadline_s": 15, "hold_s": 0.3}, timeout_s=40)
    finally:
        restored = lab.restore_globals()
    return rep, [f"global nf_conntrack_max lowered to {CT_MAX_FULL}, "
                 f"{FULL_CONNECTS} new connections; restored {', '.join(restored)}"]


def _invalid(lab: Lab, fixed: bool) -> tuple[dict[str, Any], list[str]]:
    if fixed:
        lab.set_node_sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", 1)
    rep = lab.client({"action": "inject_invalid", "pause_s": 0.5})
    return rep, ["out-of-window segment injected on the pooled connection"
                 + (", node has nf_conntrack_tcp_be_liberal=1" if fixed else "")]


def _no_listener(lab: Lab) -> tuple[dict[str, Any], list[str]]:
    return lab.client({"action": "connect_once", "port": CLOSED_PORT}), [
        f"service port {CLOSED_PORT}: the backend has no listener"]


def _proxy_idle(lab: Lab) -> tuple[dict[str, Any], list[str]]:
    rep = lab.client({"action": "idle_pool", "pool": 1, "port": PROXY_PORT,
                      "pause_s": PROXY_IDLE_CLOSE_S + 0.5})
    return rep, [f"database proxy closes connections idle {PROXY_IDLE_CLOSE_S:g} s (a FIN)"]


def _peer_reset(lab: Lab) -> tuple[dict[str, Any], list[str]]:
    rep = lab.client({"action": "idle_pool", "pool": 1, "port": PROXY_PORT, "pause_s": PEER_RESET_PAUSE_S,
                      "then_sql": f"SELECT '{KILL_MARKER.decode()}'"})
    return rep, ["database proxy aborts the connection of a query it refuses (SO_LINGER 0)"]


def _server_idle(lab: Lab, fixed: bool) -> tuple[dict[str, Any], list[str]]:
    """MariaDB's global wait_timeout, short for the scenario's sessions
    (each takes the global value as it connects) and put back after."""
    old = lab.mariadb.global_variable("wait_timeout")
    lab.mariadb.query(f"SET GLOBAL wait_timeout = {SERVER_WAIT_TIMEOUT_S}")
    try:
        spec: dict[str, Any] = {"action": "idle_pool", "pool": 2, "pause_s": SERVER_IDLE_PAUSE_S}
        if fixed:
            spec["max_idle_s"] = POOL_MAX_IDLE_S
        rep = lab.client(spec)
    finally:
        lab.mariadb.query(f"SET GLOBAL wait_timeout = {int(old)}")
    return rep, [f"MariaDB wait_timeout {SERVER_WAIT_TIMEOUT_S} s, pool idle {SERVER_IDLE_PAUSE_S:g} s"
                 + (f", the pool closes connections idle {POOL_MAX_IDLE_S:g} s" if fixed else "")]


def _firewall(lab: Lab, fixed: bool) -> tuple[dict[str, Any], list[str]]:
    if not fixed:
        lab.node_nft(f"""
table ip {FW_TABLE} {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ip saddr {CLIENT} ip daddr {BACKEND} tcp dport {MYSQL_PORT} counter reject with tcp reset
  }}
}}
""")
    # The rule stays until the next scenario starts (Lab.node_defaults), so
    # the snapshots taken after the reset still show it, as on a real node.
    rep = lab.client({"action": "connect_once", "port": MYSQL_PORT})
    return rep, ["MariaDB listens; " + ("the node rejects the client's connects with a reset "
                                        f"(nft table {FW_TABLE})" if not fixed else "no reject rule")]


def _gateway(lab: Lab, fixed: bool) -> tuple[dict[str, Any], list[str]]:
    spec: dict[str, Any] = {"action": "idle_each", "host": REMOTE_DB, "pauses": list(GATEWAY_PAUSES)}
    if fixed:
        spec["keepalive"] = GATEWAY_KEEPALIVE
    pauses = ", ".join(f"{p:g}" for p in GATEWAY_PAUSES)
    return lab.client(spec), [f"a gateway beyond the node forgets flows idle {GATEWAY_IDLE_S:g} s; "
                              f"connections idle {pauses} s"
                              + (", SO_KEEPALIVE probing every second" if fixed else "")]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("keepalive", "idle pooled connections outlive the node's conntrack entry",
             Expect("keepalive", sender="node", idle_s=IDLE_PAUSE_S, keepalive=False),
             lambda lab: _keepalive(lab, fixed=False)),
    Scenario("keepalive_fixed", "the same with SO_KEEPALIVE probing every second",
             Expect(None), lambda lab: _keepalive(lab, fixed=True)),
    Scenario("keepalive_pool", "a pool with SO_KEEPALIVE on, timed by its namespace, "
             "outlives the node's conntrack entry",
             Expect("keepalive", sender="node", idle_s=POOL_IDLE_PAUSE_S, keepalive=True),
             _keepalive_pool),
    Scenario("conntrack_invalid", "an out-of-window segment is INVALID to conntrack",
             Expect("conntrack_invalid", sender="node"), lambda lab: _invalid(lab, fixed=False)),
    Scenario("conntrack_invalid_fixed", "the same with nf_conntrack_tcp_be_liberal=1",
             Expect(None), lambda lab: _invalid(lab, fixed=True)),
    Scenario("no_listener", "connect to a service port nobody listens on",
             Expect("no_listener", sender="db", service_port=CLOSED_PORT), _no_listener),
    Scenario("proxy_idle", "a database proxy closes idle connections; the pool writes later",
             Expect("peer_closed", sender="db", service_port=PROXY_PORT, keepalive=False), _proxy_idle),
    Scenario("peer_reset", "a database proxy aborts a connection on a query it refuses",
             Expect("peer_reset", sender="db", service_port=PROXY_PORT,
                    idle_s=PEER_RESET_PAUSE_S, keepalive=False), _peer_reset),
    Scenario("server_idle", "the database closes idle sessions (wait_timeout); the pool writes later",
             Expect("peer_closed", sender="db"), lambda lab: _server_idle(lab, fixed=False)),
    Scenario("server_idle_fixed", "the same pool closing connections idle below wait_timeout",
             Expect(None), lambda lab: _server_idle(lab, fixed=True)),
    Scenario("firewall_reject", "a firewall rule on the node rejects connects while the database listens",
             Expect("firewall_reject", sender="node"), lambda lab: _firewall(lab, fixed=False)),
    Scenario("firewall_reject_fixed", "the same connect without the rule",
             Expect(None), lambda lab: _firewall(lab, fixed=True)),
    Scenario("gateway_idle", "a gateway beyond the node forgets idle flows and resets them",
             Expect("keepalive", idle_s=GATEWAY_PAUSES[0], keepalive=False, server=REMOTE_DB),
             lambda lab: _gateway(lab, fixed=False)),
    Scenario("gateway_idle_fixed", "the same with SO_KEEPALIVE probing below the gateway's timeout",
             Expect(None, server=REMOTE_DB), lambda lab: _gateway(lab, fixed=True)),
    # Last: its drops stay in the classifier's look-back window (10 s) and
    # would colour the resets of a scenario that followed it in one recording.
    Scenario("conntrack_full", "new connections while the conntrack table is full",
             Expect("conntrack_full"), _conntrack_full),
)}


def run_scenario(lab: Lab, name: str) -> ScenarioRun:
    """Run one scenario from a clean node (global sysctls restored at its end)."""
    sc = SCENARIOS[name]
    lab.node_defaults()
    before = lab.node_conntrack()
    t0 = time.time()
    try:
        client, notes = sc.run(lab)
    finally:
        t1 = time.time()
        lab.restore_globals()
    after = lab.node_conntrack()
    delta = {k: after[k] - before.get(k, 0) for k in ("invalid", "drop", "early_drop", "insert_failed")}
    # The node keeps the scenario's settings until the next one starts: the
    # tracer's context snapshot taken after a reset must still show them.
    return ScenarioRun(sc.name, sc.title, sc.expect, client, t0, t1, delta, notes)


__all__ = ["SCENARIOS", "Scenario", "ScenarioRun", "Expect", "run_scenario", "VIP", "CLIENT"]
