"""The recorder's hot path: raw events -> JSON Lines text (and -> dicts,
the live path), per event, on a synthetic batch shaped like a reset storm
(half no-socket resets sent, half resets received by connecting sockets
with an owner), the size of one 20 ms drain.

    .venv/bin/python bench/bench_encode.py [--batch 3000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from rsttrace.tracer.events import EVENT_DTYPE, Decoder
from rsttrace.tracer.session import keep_heap


def storm_batch(n: int) -> np.ndarray:
    a = np.zeros(n, dtype=EVENT_DTYPE)
    recv = np.arange(n) % 2 == 1
    a["kind"] = 1
    a["ts_ns"] = 10**12 + np.arange(n) * 13_000
    a["dir"] = np.where(recv, 2, 1)
    a["netns"] = 4026532315
    a["family"] = 2
    a["saddr"] = a["daddr"] = np.void(bytes([127, 0, 0, 1] + [0] * 12))
    a["sport"] = 9
    a["dport"] = 30000 + np.arange(n) % 20000
    a["flags"] = np.where(recv, 0x01 | 0x40 | 0x80, 0x10 | 0x20)
    a["reason"] = np.where(recv, 0, 1)
    a["state"] = np.where(recv, 2, 0)
    a["trigger_flags"] = np.where(recv, 0, 2)
    a["pid"] = np.where(recv, 1234, 0)
    a["cookie"] = np.where(recv, np.arange(n) + 5, 0)
    a["comm"] = np.where(recv, b"storm", b"")
    a["cgroup"] = np.where(recv, 77, 0)
    a["ka_time"] = np.where(recv, 7200 * 250, 0)
    a["ka_intvl"] = np.where(recv, 75 * 250, 0)
    a["ka_probes"] = np.where(recv, 9, 0)
    a["dev_netns"] = np.where(recv, 0, 4026532315)
    return a


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    keep_heap()   # as every trace session does
    a = storm_batch(args.batch)
    d = Decoder(hz=250, mono_to_unix=1.7e9, tcp_states={2: "SYN_SENT"}, rst_reasons={1: "NO_SOCKET"})
    # the text is the dicts, exactly
    assert [json.loads(line) for line in d.encode_jsonl(a).decode().split("\n")[:-1]] == \
        json.loads(json.dumps(d.decode_array(a)))
    for label, fn in (("encode_jsonl (record)", d.encode_jsonl), ("decode_array (live)", d.decode_array)):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(args.repeat):
                fn(a)
            best = min(best, (time.perf_counter() - t) / args.repeat / len(a))
        print(f"{label}: {best * 1e6:.2f} us per event (best of 3 x {args.repeat} batches of {len(a)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
