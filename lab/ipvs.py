"""The IPVS lab: kube-proxy in IPVS mode, on kernels that have IPVS.

The namespace lab of lab/topology.py (client pod, node, MariaDB pod), with
the node's nftables DNAT replaced by an IPVS virtual service: VIP:3306 on the
node's `lo`, round robin to the MariaDB backend by masquerade (`ipvsadm -A`,
`ipvsadm -a -m`), `net.ipv4.vs.conntrack=1` so netfilter's masquerade sees
IPVS's flows (kube-proxy's settings), and short `ipvsadm --set` timeouts.

Scenarios (seconds instead of the field's minutes):
- ipvs_idle_expiry: IPVS forgets an idle pooled connection (tcp timeout
  3 s, pool idle 6 s); the next write is not a SYN, so IPVS does not schedule
  it, the node has no socket on VIP:3306 and resets it -> `keepalive`;
- ipvs_timeout_mismatch: conntrack forgets first (established 2 s) while
  IPVS still holds the flow (tcp 30 s), pool idle 4 s -> `timeout_mismatch`;
- ipvs_keepalive_fixed: keepalive probes every second, below the IPVS
  timeout, keep the entry alive -> no reset.

Namespaces are named rtvm-<id>-{cli,node,db}. Run as
`python -m rsttrace.lab.ipvs [--json] [SCENARIO ...]` (root, a kernel with
IPVS): it builds the lab, traces it, runs the scenarios and prints one
diagnosis per scenario; the vm tier and `rsttrace demo --vm` run it in a VM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from rsttrace.lab import netns
from rsttrace.lab.mariadb import MariaDB
from rsttrace.lab.netns import LabError
from rsttrace.lab.scenarios import KEEPALIVE_FIX, Expect, ScenarioRun
from rsttrace.lab.topology import BACKEND, MYSQL_PORT, VIP, Lab, LabState

PREFIX = "rtvm-"
RESULT_MARK = "RSTTRACE-IPVS-RESULT "
DEFAULT_TIMEOUTS = (900, 120, 300)   # IPVS tcp / tcpfin / udp


class IPVSLab(Lab):
    """Lab with an IPVS virtual service instead of nftables DNAT."""

    def __init__(self, run_id: str | None = None, progress=None):
        super().__init__(run_id, progress)
        self.cli = f"{PREFIX}{self.run_id}-cli"
        self.node = f"{PREFIX}{self.run_id}-node"
        self.db = f"{PREFIX}{self.run_id}-db"
        self.gw = f"{PREFIX}{self.run_id}-gw"
        self.state = LabState(self.run_id, self.state.pid, [self.cli, self.node, self.db, self.gw],
                              self.state.workdir)
        self.mariadb = MariaDB(self.db, BACKEND, MYSQL_PORT, self.workdir)

    def up(self) -> "IPVSLab":
        if not netns.run(["sh", "-c", "test -e /proc/net/ip_vs || modprobe ip_vs"],
                         check=False).returncode == 0:
            raise LabError("this kernel has no IPVS (modprobe ip_vs failed): run the IPVS lab "
                           "in a VM with `rsttrace demo --vm`")
        super().up()
        return self

    def _build(self) -> None:
        super()._build()
        # IPVS takes the service over: drop the DNAT, keep the masquerade.
        netns.ns_exec(self.node, ["nft", "delete", "chain", "ip", "rtlab", "prerouting"])
        svc = f"{VIP}:{MYSQL_PORT}"
        netns.ns_exec(self.node, ["ipvsadm", "-A", "-t", svc, "-s", "rr"])
        netns.ns_exec(self.node, ["ipvsadm", "-a", "-t", svc, "-r", f"{BACKEND}:{MYSQL_PORT}", "-m"])
        self.progress(f"IPVS virtual service {svc} -> {BACKEND}:{MYSQL_PORT} (masquerade)")

    def node_defaults(self) -> None:
        # kube-proxy's IPVS-mode node: conntrack on for IPVS, loose pick-up
        # (the kernel default), long conntrack timeouts, IPVS defaults.
        for name, value in (("net.ipv4.vs.conntrack", 1), ("net.ipv4.vs.expire_nodest_conn", 1),
                            ("net.netfilter.nf_conntrack_tcp_loose", 1),
                            ("net.netfilter.nf_conntrack_tcp_be_liberal", 0),
                            ("net.netfilter.nf_conntrack_tcp_timeout_established", 432000)):
            netns.set_sysctl(self.node, name, value)
        self.set_ipvs_timeouts(*DEFAULT_TIMEOUTS)
        netns.ns_exec(self.node, ["conntrack", "-F"], check=False)
        netns.ns_exec(self.node, ["ipvsadm", "-Z"], check=False)

    def set_ipvs_timeouts(self, tcp: int, tcpfin: int, udp: int) -> None:
        netns.ns_exec(self.node, ["ipvsadm", "--set", str(tcp), str(tcpfin), str(udp)])

    def ipvs_timeouts_cli(self) -> tuple[int, int, int]:
        """`ipvsadm -Ln --timeout` (the cross-check for the netlink reader)."""
        out = netns.ns_exec(self.node, ["ipvsadm", "-Ln", "--timeout"]).stdout
        nums = [int(x) for x in out.split(":")[-1].split()]
        return nums[0], nums[1], nums[2]


@dataclass(frozen=True)
class IPVSScenario:
    name: str
    title: str
    expect: Expect
    ipvs: tuple[int, int, int]
    ct_established: int
    pause_s: float
    loose: int = 1
    keepalive: bool = False


SCENARIOS: dict[str, IPVSScenario] = {s.name: s for s in (
    IPVSScenario("ipvs_idle_expiry", "IPVS forgets an idle pooled connection",
                 Expect("keepalive", sender="node", idle_s=6.0, keepalive=False),
                 (3, 2, 2), 432000, 6.0),
    IPVSScenario("ipvs_timeout_mismatch", "conntrack forgets a flow IPVS still holds",
                 Expect("timeout_mismatch", sender="node", idle_s=4.0, keepalive=False),
                 (30, 2, 2), 2, 4.0, loose=0),
    IPVSScenario("ipvs_keepalive_fixed", "keepalive below the IPVS timeout",
                 Expect(None), (3, 2, 2), 432000, 6.0, keepalive=True),
)}


def run_scenario(lab: IPVSLab, sc: IPVSScenario) -> ScenarioRun:
    lab.node_defaults()
    lab.set_ipvs_timeouts(*sc.ipvs)
    lab.set_node_sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", sc.ct_established)
    lab.set_node_sysctl("net.netfilter.nf_conntrack_tcp_loose", sc.loose)
    before = lab.node_conntrack()
    spec: dict[str, Any] = {"action": "idle_pool", "pool": 2, "pause_s": sc.pause_s}
    if sc.keepalive:
        spec["keepalive"] = KEEPALIVE_FIX
    t0 = time.time()
    client = lab.client(spec)
    t1 = time.time()
    after = lab.node_conntrack()
    delta = {k: after[k] - before.get(k, 0) for k in ("invalid", "drop", "early_drop", "insert_failed")}
    notes = [f"ipvsadm --set {' '.join(map(str, sc.ipvs))}, conntrack established "
             f"{sc.ct_established} s, loose {sc.loose}, pool idle {sc.pause_s:g} s"
             + (", keepalive 1 s" if sc.keepalive else "")]
    return ScenarioRun(sc.name, sc.title, sc.expect, client, t0, t1, delta, notes)


@dataclass
class Outcome:
    scenario: str
    expected: str
    diagnosed: str
    evidence: str
    fix: str
    client_errors: list[str]
    ipvs_expire_events: int     # expiries of the scenario's client flows
    ipvs_expire_netns: list     # their namespaces (inodes), distinct
    node_netns: int             # the IPVS node's namespace (inode)
    ipvs_joined: bool           # the verdict's evidence cites the IPVS expiry
    ipvs_netlink: dict | None   # node's timeouts read by tracer/ipvs.py
    ipvs_cli: tuple | None      # the same from ipvsadm -Ln --timeout
    ok: bool


def run_all(names: list[str], say=print) -> tuple[list[Outcome], dict[str, Any]]:
    from rsttrace.lab.diagnose import diagnose, window
    from rsttrace.tracer.session import TraceSession

    outcomes: list[Outcome] = []
    with IPVSLab(progress=lambda m: say(f"  {m}")) as lab:
        label = {ino: ns.removeprefix(f"{PREFIX}{lab.run_id}-") for ns, ino in lab.inodes().items()}
        t0 = time.monotonic()
        session = TraceSession(netns=list(label), ctx_period_s=0.5,
                               netns_names={ino: ns for ns, ino in lab.inodes().items()})
        session.start()
        meta = {"kernel": session.header["kernel"], "plan": session.header["plan"],
                "hooks": session.header["hooks"], "transport": session.header["transport"],
                "attach_s": round(time.monotonic() - t0, 1)}
        say(f"  BPF attached in {meta['attach_s']} s; ipvs_expire: "
            f"{session.header['plan']['ipvs_expire']['hook']}")
        records: list[dict[str, Any]] = []
        try:
            for name in names:
                sc = SCENARIOS[name]
                say(f"> {name}: {sc.title}")
                session.snapshot()
                run = run_scenario(lab, sc)
                # pair the flow's resets, then a context snapshot after them
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    records += session.poll(0.2)
                snap = session.snapshot()
                records += session.poll(0.3)
                node_ino = lab.inodes()[lab.node]
                node_ctx = next((n for n in snap["namespaces"] if n["netns"] == node_ino), {})
                d = diagnose(run, window(records, run.t_start, time.time()), label)
                flows = set(run.flows)
                exp = [r for r in records if r.get("kind") == "ipvs_expire"
                       and (r.get("client"), r.get("cport")) in flows]
                o = Outcome(name, d.expected, d.diagnosed, d.evidence, d.fix, run.errors, len(exp),
                            sorted({r.get("netns") for r in exp}), node_ino,
                            "IPVS expired" in d.evidence, node_ctx.get("ipvs"),
                            lab.ipvs_timeouts_cli(), d.ok)
                outcomes.append(o)
                say(f"  client saw: {', '.join(sorted(set(run.errors))) or 'no error'}")
                say(f"  rsttrace: {d.diagnosed} [{'ok' if d.ok else 'MISMATCH'}] - {d.evidence}")
                if d.fix:
                    say(f"  fix: {d.fix}")
        finally:
            session.stop()
    return outcomes, meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rsttrace.lab.ipvs",
                                 description="IPVS lab scenarios (root, a kernel with IPVS and kprobes)")
    ap.add_argument("scenario", nargs="*", help=f"default: all ({', '.join(SCENARIOS)})")
    ap.add_argument("--json", action="store_true", help="also print one result line for machines")
    args = ap.parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    bad = [n for n in names if n not in SCENARIOS]
    if bad:
        print(f"unknown scenario {bad[0]!r}: choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    try:
        outcomes, meta = run_all(names)
    except LabError as e:
        print(f"rsttrace ipvs lab: {e}", file=sys.stderr)
        return 2
    for o in outcomes:
        print(f"{o.scenario:24} expected {o.expected:18} diagnosed {o.diagnosed:18} "
              f"{'ok' if o.ok else 'MISMATCH'}")
    if args.json:
        print(RESULT_MARK + json.dumps({**meta, "outcomes": [asdict(o) for o in outcomes]}))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
