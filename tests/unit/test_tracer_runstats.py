"""The arithmetic of `rsttrace doctor --cost` on given run statistics (the
kernel test measures real ones)."""

from __future__ import annotations

import io

from rsttrace.commands.doctor import write_cost
from rsttrace.tracer.runstats import cost


def test_cost_per_hook_and_total():
    c = cost({"tcp_send_reset": (20_000, 3_000_000), "kfree_skb": (40_000, 2_400_000)}, 2.0)
    assert c["seconds"] == 2.0
    assert list(c["hooks"]) == ["kfree_skb", "tcp_send_reset"]
    send = c["hooks"]["tcp_send_reset"]
    assert send == {"runs_per_s": 10_000.0, "ns_per_run": 150, "cpu_pct": 0.15}
    assert c["hooks"]["kfree_skb"] == {"runs_per_s": 20_000.0, "ns_per_run": 60, "cpu_pct": 0.12}
    assert c["cpu_pct"] == 0.27   # 5.4 ms of program time in 2 s


def test_cost_written_as_a_table():
    out = io.StringIO()
    write_cost(out.write, cost({"tcp_send_reset": (20_000, 3_000_000)}, 2.0))
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("Cost at this node's traffic (2.0 s")
    assert lines[3].split() == ["tcp_send_reset", "10000.0", "150", "0.1500"]
    assert "0.1500 % of one CPU" in lines[4]
    out = io.StringIO()
    write_cost(out.write, cost({}, 3.0))
    assert out.getvalue().splitlines()[-1].strip() == "no program ran"
