"""The names the analysis speaks in, each defined once: the causes of a
reset, the keys and severities of configuration findings.

They are `StrEnum`s: each member is the string it names (equal to it,
hashed like it, written as it to CSV, JSON and metric labels), so a
recording, a report or a dashboard sees plain names while the code gets
one definition to import and a typo fails at import time.

Adding a cause is one member of `Cause`, placed by its precedence (the
classifier names the first that fits), and its rule in analysis/classify.py.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


def weight(rec: dict[str, Any]) -> int:
    """How many resets a record stands for: a storm's `reset_agg` its
    `count`, any other record 1."""
    n = rec.get("count")
    return n if type(n) is int and n > 0 else 1


class Cause(StrEnum):
    """Why a connection was reset, in order of precedence."""
    CONNTRACK_FULL = "conntrack_full"
    FIREWALL_REJECT = "firewall_reject"
    CONNTRACK_INVALID = "conntrack_invalid"
    PEER_CLOSED = "peer_closed"
    TIMEOUT_MISMATCH = "timeout_mismatch"
    KEEPALIVE = "keepalive"
    NO_LISTENER = "no_listener"
    PEER_RESET = "peer_reset"
    UNKNOWN = "unknown"


#: Every cause, in order of precedence (the report lists them in this order).
CAUSES: tuple[Cause, ...] = tuple(Cause)


class Confidence(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class FindingKey(StrEnum):
    """What a configuration finding (analysis/config.py) is about."""
    ORDERING = "ordering"          # keepalive < IPVS tcp timeout <= conntrack established broken
    NO_MARGIN = "no_margin"        # keepalive equal to a timeout: the probe races the expiry
    IDLE_TIMEOUT = "idle_timeout"  # keepalive not below a declared middlebox idle timeout
    CT_FULL = "ct_full"
    CT_NEAR_FULL = "ct_near_full"
    BUCKETS = "buckets"            # fewer hash buckets than max/4


#: The findings about timeouts (the live screen's timeouts panel shows these).
TIMEOUT_FINDINGS = frozenset({FindingKey.ORDERING, FindingKey.NO_MARGIN, FindingKey.IDLE_TIMEOUT})


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Timeout(StrEnum):
    """The idle timeouts the ordering rule relates (analysis/fixes.py
    `ordering_breaks`): keepalive < IPVS tcp timeout <= conntrack
    established timeout."""
    KEEPALIVE = "tcp_keepalive_time"
    IPVS_TCP = "IPVS tcp timeout"
    CT_ESTABLISHED = "conntrack established timeout"
