"""What rsttrace concluded about one scenario, from the records traced during it.

Pure Python (no root, no bcc): the records of the scenario's time window go
through the same `Classifier` as live use and reports; the verdicts on the
scenario's client flows are its diagnosis. A scenario whose flows see no
reset (conntrack full drops SYNs; the controls) is diagnosed from what the
stream shows instead: the analysis' conntrack episodes (table-full lines,
drop counters, a table at 95 % of max), or nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rsttrace.analysis.vocab import Cause, Confidence
from rsttrace.lab.scenarios import ScenarioRun
from rsttrace.lab.topology import CLIENT

NONE = "none"   # no reset on the scenario's flows


@dataclass
class Diagnosis:
    scenario: str
    expected: str                  # a cause, or "none" for a control
    diagnosed: str
    evidence: str
    fix: str
    verdicts: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.expected == self.diagnosed


def window(records: list[dict[str, Any]], t0: float, t1: float,
           lead_s: float = 2.0) -> list[dict[str, Any]]:
    """The scenario's records in time order: its events, and context from
    just before it started so the classifier knows the node's settings."""
    inside = [r for r in records if isinstance(r.get("t"), (int, float))
              and (t0 <= r["t"] <= t1 or (r.get("kind") == "ctx" and t0 - lead_s <= r["t"] < t0))]
    return sorted(inside, key=lambda r: r["t"])


def scenario_flow(v: Any, service_port: int) -> bool:
    """A verdict on one of the scenario's client connections: the client
    address and the service port on either end of the reset."""
    return (CLIENT in (v.src, v.dst)) and service_port in (v.sport, v.dport)


def _fix_text(fixes: list[Any]) -> str:
    from rsttrace.analysis.report import fix_text
    return fix_text(fixes[:1])


def diagnose(run: ScenarioRun, records: list[dict[str, Any]], netns_label: dict[int, str]) -> Diagnosis:
    from rsttrace.analysis.classify import Classifier
    from rsttrace.analysis.findings import conntrack_episodes
    from rsttrace.analysis.pump import Pump

    # the scenario's records are all there: look ahead, as a report does
    c = Classifier(netns_names=netns_label, look_ahead=True)
    verdicts: list[Any] = []
    Pump(c, verdicts.extend).run([records])
    mine = [v for v in verdicts if scenario_flow(v, run.expect.service_port)]
    expected = run.expect.cause or NONE
    if mine:
        # The first reset on the scenario's flows is the cause; later ones
        # are its aftermath (e.g. the peer's retransmission meeting the
        # closed client socket) and are only counted.
        mine.sort(key=lambda v: v.t)
        first = mine[0]
        evidence = first.evidence
        if len(mine) > 1:
            others = Counter(v.cause for v in mine[1:])
            evidence += "; then " + ", ".join(f"{n}x {c}" for c, n in sorted(others.items()))
        return Diagnosis(run.name, expected, first.cause, evidence, _fix_text(first.fixes), mine)
    # No reset on the scenario's flows: a full table drops SYNs (clients
    # time out), which the analysis reports as conntrack episodes.
    episodes = conntrack_episodes(c.context, since=run.t_start)
    if episodes:
        ep = max(episodes, key=lambda e: (e.confidence is Confidence.HIGH, e.t_last - e.t_first))
        evidence = ep.evidence + "; no reset: new connections time out"
        if len(episodes) > 1:
            evidence += f" ({len(episodes)} episodes)"
        return Diagnosis(run.name, expected, Cause.CONNTRACK_FULL, evidence, _fix_text(ep.fixes))
    return Diagnosis(run.name, expected, NONE,
                     f"no reset on the scenario's flows ({len(run.flows)} connections)", "")
