"""What reading IPVS timeouts costs the context collector, without IPVS:
importing the codec (pyroute2) in a fresh interpreter, and encoding a
GET_CONFIG request and decoding the reply captured under Debian's 6.1
(tests/unit/test_tracer_ipvs.py), per namespace of a snapshot.

    .venv/bin/python bench/bench_ipvs.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import timeit

IMPORT = ("import resource, time; r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
          "t = time.perf_counter(); import rsttrace.tracer.ipvsconfig; "
          "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20_000)
    args = ap.parse_args()
    secs, kib = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True,
                               check=True).stdout.split()
    print(f"import pyroute2 (tracer/ipvsconfig.py): {float(secs) * 1000:.0f} ms, +{int(kib) / 1024:.0f} MB RSS")

    sys.path.insert(0, "tests/unit")
    from test_tracer_ipvs import GET_REPLY_61

    from rsttrace.tracer import ipvsconfig as C

    def one() -> dict:
        C._get_request(0x20)
        return C.timeouts_of(C.parse_replies(GET_REPLY_61, 0x20))
    assert one() == {"tcp": 901, "tcpfin": 121, "udp": 301}
    per = min(timeit.repeat(one, number=args.calls, repeat=3)) / args.calls
    print(f"GET_CONFIG request + reply decoded: {per * 1e6:.1f} us per namespace")
    return 0


if __name__ == "__main__":
    sys.exit(main())
