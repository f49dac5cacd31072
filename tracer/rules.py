"""The firewall rules of a network namespace that answer with a TCP reset.

A rule such as nft's `reject with tcp reset` or iptables' `-j REJECT
--reject-with tcp-reset` makes the reset inside netfilter: no TCP stack
sends it, so the tracer sees only the reset received and a netfilter drop
of the packet it answers. Which rule did it is read here, in the
namespace the calling thread is in (the context collector enters it), and
recorded with the context (docs/EVENTS.md, ctx `rules`).

nftables is read as JSON (`nft -j list ruleset`, the stable interface of
the nft tool; it covers iptables-nft too). iptables-nft rules appear there
as `xt` targets that do not say which reject they send, so for those the
iptables-save of the same backend gives the rule as iptables writes it.
Legacy iptables tables (`/proc/net/ip_tables_names` not empty) are read
with iptables-legacy-save. Each rule: `source` ("nft" or "iptables"),
`family`, `table`, `chain`, `handle` (nft) and `text`, and `packets` when
the rule has a counter (iptables always does).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

RULES_MAX = 64                 # rules kept per namespace
OUTPUT_MAX = 32 << 20          # a ruleset larger than this is not parsed
TIMEOUT_S = 5.0


def _run(cmd: list[str]) -> str | None:
    # A child process starts in the calling thread's namespace.
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0 or len(r.stdout) > OUTPUT_MAX:
        return None
    return r.stdout


def _legacy_tables(proc_name: str) -> bool:
    try:
        with open(f"/proc/thread-self/net/{proc_name}") as fh:
            return bool(fh.read().split())
    except OSError:
        return False


def read_reset_rules() -> list[dict[str, Any]] | None:
    """The rules of this thread's namespace that answer with a TCP reset,
    in ruleset order; None when nothing could be read."""
    rules: list[dict[str, Any]] = []
    read = False
    text = _run(["nft", "-j", "list", "ruleset"])
    if text is not None:
        read = True
        nft, xt_families = parse_nft_json(text)
        rules += nft
        for fam in sorted(xt_families):
            saved = _run(["ip6tables-save" if fam == "ip6" else "iptables-save", "-c"])
            if saved is not None:
                rules += parse_iptables_save(saved, fam)
    for fam, proc_name, tool in (("ip", "ip_tables_names", "iptables-legacy-save"),
                                 ("ip6", "ip6_tables_names", "ip6tables-legacy-save")):
        if _legacy_tables(proc_name):
            saved = _run([tool, "-c"])
            if saved is not None:
                read = True
                rules += parse_iptables_save(saved, fam)
    return rules[:RULES_MAX] if read else None


def parse_nft_json(text: str) -> tuple[list[dict[str, Any]], set[str]]:
    """(rules with `reject with tcp reset`, families holding an iptables
    REJECT target that the JSON cannot describe)."""
    try:
        items = json.loads(text).get("nftables") or []
    except (ValueError, AttributeError):
        return [], set()
    out: list[dict[str, Any]] = []
    xt: set[str] = set()
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        exprs = rule.get("expr") or []
        resets = any(isinstance(e, dict) and isinstance(e.get("reject"), dict)
                     and e["reject"].get("type") == "tcp reset" for e in exprs)
        if any(isinstance(e, dict) and isinstance(e.get("xt"), dict) and e["xt"].get("name") == "REJECT"
               for e in exprs):
            xt.add(str(rule.get("family")))
            continue
        if not resets:
            continue
        packets = next((e["counter"].get("packets") for e in exprs
                        if isinstance(e, dict) and isinstance(e.get("counter"), dict)), None)
        out.append({"source": "nft", "family": str(rule.get("family")), "table": str(rule.get("table")),
                    "chain": str(rule.get("chain")), "handle": rule.get("handle"),
                    # the counter is `packets`: the text stays the same as it counts
                    "text": " ".join(_expr(e) for e in exprs
                                     if not (isinstance(e, dict) and "counter" in e)),
                    "packets": packets if isinstance(packets, int) else None})
    return out, xt


def parse_iptables_save(text: str, family: str) -> list[dict[str, Any]]:
    """`iptables-save -c` lines of REJECT rules that send a TCP reset."""
    out: list[dict[str, Any]] = []
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        packets = None
        if line.startswith("["):
            counts, _, line = line.partition("] ")
            try:
                packets = int(counts[1:].split(":")[0])
            except ValueError:
                packets = None
        if not line.startswith("-A ") or "-j REJECT" not in line or "tcp-reset" not in line:
            continue
        chain = line.split()[1]
        out.append({"source": "iptables", "family": family, "table": table or "filter", "chain": chain,
                    "handle": None, "text": line.strip(), "packets": packets})
    return out


# ---- nft's JSON expressions as its own text, for the rules that matter ------

def _value(v: Any) -> str:
    if isinstance(v, dict):
        if "set" in v:
            return "{ " + ", ".join(_value(x) for x in v["set"]) + " }"
        if "prefix" in v:
            p = v["prefix"]
            return f"{_value(p.get('addr'))}/{p.get('len')}"
        if "range" in v:
            lo, hi = v["range"]
            return f"{_value(lo)}-{_value(hi)}"
        if "payload" in v:
            p = v["payload"]
            return f"{p.get('protocol', p.get('base', '?'))} {p.get('field', '')}".strip()
        if "meta" in v:
            return f"meta {v['meta'].get('key')}"
        if "ct" in v:
            return f"ct {v['ct'].get('key')}"
        if "concat" in v:
            return " . ".join(_value(x) for x in v["concat"])
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, list):
        return ", ".join(_value(x) for x in v)
    return str(v)


def _expr(e: Any) -> str:
    if not isinstance(e, dict) or len(e) != 1:
        return json.dumps(e, separators=(",", ":"))
    (key, val), = e.items()
    if key == "match" and isinstance(val, dict):
        op = val.get("op", "==")
        return f"{_value(val.get('left'))} {'' if op in ('==', 'in') else op + ' '}{_value(val.get('right'))}"
    if key == "counter" and isinstance(val, dict):
        return f"counter packets {val.get('packets')} bytes {val.get('bytes')}"
    if key == "reject":
        if isinstance(val, dict) and val.get("type") == "tcp reset":
            return "reject with tcp reset"
        if isinstance(val, dict) and val.get("expr"):
            return f"reject with {val.get('type')} {val.get('expr')}"
        return "reject"
    if val is None or val == {}:
        return key
    if key in ("accept", "drop", "continue", "return"):
        return key
    if key in ("jump", "goto") and isinstance(val, dict):
        return f"{key} {val.get('target')}"
    return f"{key} {_value(val)}"
