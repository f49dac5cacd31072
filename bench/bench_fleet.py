"""Benchmark: `rsttrace report A.jsonl B.jsonl -o out.csv` over two nodes.

The recording of bench_report.py split in two nodes: node-a has the client
namespace (the received resets and its context), node-b the router (the
sent resets and its context), as two recorders with `record --netns` would
make them. The fleet report joins both ends across the recordings; the same
resets in one recording give the single-node report to compare with. Wall
time and each child's peak RSS; memory must stay bounded (< 1 GB) however
long the inputs.

    .venv/bin/python bench/bench_fleet.py [--resets N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_report import CLI, LB, generate  # noqa: E402

TARGET_RSS = 1 << 30


def split(src: Path, a: Path, b: Path) -> None:
    """node-a: the client namespace's records; node-b: the router's."""
    with open(src) as f, open(a, "w") as fa, open(b, "w") as fb:
        head = json.loads(f.readline())
        for out, node in ((fa, "node-a"), (fb, "node-b")):
            out.write(json.dumps({**head, "node": node}) + "\n")
        cli, lb = f'"netns":{CLI},', f'"netns":{LB},'
        for line in f:
            if line.startswith('{"kind":"ctx"'):
                rec = json.loads(line)
                for out, ns in ((fa, CLI), (fb, LB)):
                    out.write(json.dumps({**rec, "namespaces": [n for n in rec["namespaces"]
                                                                if n["netns"] == ns]}) + "\n")
            elif cli in line:
                fa.write(line)
            elif lb in line:
                fb.write(line)
            else:               # the totals line
                fa.write(line)
                fb.write(line)


def run(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes of this child and what it waited
    for, its stderr)."""
    exe = Path(sys.executable).with_name("rsttrace")
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(exe), "report", *args], stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(text)
    return wall, usage.ru_maxrss * 1024, text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resets", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rta-bench-") as d:
        d = Path(d)
        one, a, b = d / "one.jsonl", d / "node-a.jsonl", d / "node-b.jsonl"
        generate(one, args.resets)
        split(one, a, b)
        print(f"generated {args.resets} resets: node-a {a.stat().st_size >> 20} MiB, "
              f"node-b {b.stat().st_size >> 20} MiB")
        w1, r1, _ = run([str(one), "-o", str(d / "one.csv")])
        print(f"one recording: {w1:.2f} s, peak RSS {r1 >> 20} MiB")
        w2, r2, err = run([str(a), str(b), "-o", str(d / "fleet.csv"), "--summary", str(d / "s.csv")])
        with open(d / "fleet.csv") as f:
            rows = sum(1 for _ in f) - 1
        with open(d / "s.csv") as f:
            pairs = [ln.strip() for ln in f if ln.startswith("node_pair,")]
        print(f"two nodes: {rows} rows in {w2:.2f} s ({w2 / w1:.1f}x), peak RSS {r2 >> 20} MiB; "
              f"joined: {pairs}")
        if err.strip():
            print(err.strip())
        ok = r2 < TARGET_RSS and rows == args.resets
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
