"""Parsing the kernel's per-namespace counters (tracer/context.py)."""

from rsttrace.tracer.context import parse_ct_stat, parse_sockstat

SOCKSTAT = """sockets: used 8
TCP: inuse 5 orphan 1 tw 2 alloc 9 mem 206
UDP: inuse 0 mem 0
"""


def test_sockstat_counts_tcp_in_use_and_time_wait():
    assert parse_sockstat(SOCKSTAT) == 7


def test_sockstat6_counts_tcp6_in_use():
    assert parse_sockstat("TCP6: inuse 3\nUDP6: inuse 1\n") == 3


def test_sockstat_without_tcp_line_is_zero():
    assert parse_sockstat("sockets: used 1\n") == 0
    assert parse_sockstat("") == 0


def test_ct_stat_sums_per_cpu_rows_by_header():
    text = ("entries  clashres  found  invalid  drop  early_drop  insert_failed\n"
            "00000003  00000001  00000000  0000000a  00000002  00000000  00000000\n"
            "00000003  00000002  00000000  00000001  00000000  00000001  00000000\n")
    st = parse_ct_stat(text)
    assert st["invalid"] == 11 and st["drop"] == 2 and st["early_drop"] == 1
    assert st["clash_resolve"] == 3
