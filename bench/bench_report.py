"""Benchmark: `rsttrace report FILE -o out.csv` on 1,000,000 recorded resets.

Generates a synthetic recording (following docs/EVENTS.md) in a temporary
directory: paired no-socket/received resets of idle flows (keepalive),
paired resets while `invalid` rises (conntrack_invalid), received-only peer
resets and refused SYNs, 1000 resets per second, a ctx snapshot every
second. Then runs the real command in a child process and reports wall
time and the child's peak RSS. Target: <= 10 s and < 1 GB.

    .venv/bin/python bench/bench_report.py [--resets N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rsttrace.schema import SCHEMA_VERSION

LB, CLI, SRV = 4026532247, 4026532300, 4026532301
TARGET_S, TARGET_RSS = 10.0, 1 << 30


def _ctx(t: float, invalid: int) -> str:
    return json.dumps({"kind": "ctx", "t": t, "namespaces": [
        {"netns": LB, "name": "rta-lb", "nat": True, "ipvs": None,
         "ct": {"count": 1200, "max": 262144, "buckets": 65536, "drop": 0, "early_drop": 0,
                "invalid": invalid, "insert_failed": 0, "found": 0, "search_restart": 0, "chaintoolong": 0},
         "sysctl": {"nf_conntrack_tcp_timeout_established": 900, "nf_conntrack_tcp_be_liberal": 0,
                    "tcp_keepalive_time": 7200}},
        {"netns": CLI, "name": "rta-cli", "nat": False, "ipvs": None, "ct": None,
         "sysctl": {"tcp_keepalive_time": 7200}}]}, separators=(",", ":"))


SENT = ('{"kind":"reset","t":%.6f,"netns":%d,"dir":"sent","family":4,"src":"10.96.0.10","sport":3306,'
        '"dst":"10.0.%d.%d","dport":%d,"state":"","state_raw":0,"reason":"NO_SOCKET","reason_raw":1,'
        '"has_sock":false,"cookie":null,"syn":%s,"trigger_flags":16,"idle_ms":null,"keepalive":null,'
        '"ka_time_s":null,"ka_intvl_s":null,"ka_probes":null,"ka_per_socket":null,"dev_netns":%d,'
        '"pid":null,"comm":null,"cgroup":null}')
RECV = ('{"kind":"reset","t":%.6f,"netns":%d,"dir":"recv","family":4,"src":"%s","sport":3306,'
        '"dst":"10.0.%d.%d","dport":%d,"state":"ESTABLISHED","state_raw":1,"reason":null,"reason_raw":null,'
        '"has_sock":true,"cookie":%d,"syn":null,"trigger_flags":null,"idle_ms":%d,"keepalive":false,'
        '"ka_time_s":7200,"ka_intvl_s":75,"ka_probes":9,"ka_per_socket":false,"dev_netns":null,'
        '"pid":%d,"comm":"java","cgroup":4242}')


def generate(path: Path, resets: int) -> None:
    t0 = 1_700_000_000.0
    rate = 1000.0
    with open(path, "w") as f:
        f.write(json.dumps({"kind": "header", "schema": SCHEMA_VERSION, "t": t0, "host": "bench", "kernel": "6.18",
                            "tool": "bench", "hz": 1000, "plan": {}, "filters": {"ports": [], "netns": []},
                            "netns_names": {str(LB): "rta-lb", str(CLI): "rta-cli"}}) + "\n")
        n = i = 0
        invalid = 0
        next_ctx = t0
        lines: list[str] = []
        while n < resets:
            t = t0 + n / rate
            if t >= next_ctx:
                lines.append(_ctx(next_ctx, invalid))
                next_ctx += 1.0
            a, b, port = (i >> 8) & 255, i & 255, 10000 + i % 50000
            kind = i % 10
            if kind < 5 and n + 1 < resets:       # idle flow forgotten by conntrack: keepalive
                lines.append(SENT % (t, LB, a, b, port, "false", LB))
                lines.append(RECV % (t + 0.0002, CLI, "10.96.0.10", a, b, port, i, 950_000, 1000 + i % 300))
                n += 2
            elif kind < 7 and n + 1 < resets:     # fresh flow, invalid rising: conntrack_invalid
                invalid += 1
                lines.append(SENT % (t, LB, a, b, port, "false", LB))
                lines.append(RECV % (t + 0.0002, CLI, "10.96.0.10", a, b, port, i, 300, 1000 + i % 300))
                n += 2
            elif kind < 9:                        # a peer elsewhere reset it
                lines.append(RECV % (t, CLI, "192.168.7.9", a, b, port, i, 1200, 2000 + i % 50))
                n += 1
            else:                                 # refused connect
                lines.append(SENT % (t, LB, a, b, port, "true", LB))
                n += 1
            i += 1
            if len(lines) >= 10_000:
                f.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            f.write("\n".join(lines) + "\n")
        f.write(json.dumps({"kind": "totals", "t": t0 + resets / rate, "events": resets, "lost": 0,
                            "by_kind": {"reset": resets}, "duration_s": resets / rate}) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resets", type=int, default=1_000_000)
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("rsttrace")
    with tempfile.TemporaryDirectory(prefix="rta-bench-") as d:
        rec, out = Path(d) / "bench.jsonl", Path(d) / "out.csv"
        g0 = time.perf_counter()
        generate(rec, args.resets)
        print(f"generated {args.resets} resets ({rec.stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - g0:.1f} s")
        t0 = time.perf_counter()
        proc = subprocess.run([str(exe), "report", str(rec), "-o", str(out)], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        with open(out) as f:
            rows = sum(1 for _ in f) - 1
        ok = wall <= TARGET_S and rss < TARGET_RSS and rows == args.resets
        print(f"report: {rows} rows in {wall:.2f} s, peak RSS {rss / 2**20:.0f} MiB "
              f"(target <= {TARGET_S:.0f} s, < {TARGET_RSS >> 20} MiB): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
