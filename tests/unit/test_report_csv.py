"""CSV layout, escaping, atomic writes; the writer process and the
in-process writer give the same bytes (tests/unit/test_csv_golden.py holds
every path to the golden files)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from rsttrace.analysis import csvout, report
from rsttrace.analysis.report import COLUMNS, report_recording
from rsttrace.outfile import OutFile

FIX = Path(__file__).resolve().parents[1] / "fixtures"
FIRST = ("time,direction,netns,pod,pid,comm,src,sport,dst,dport,state,kernel_reason,idle_s,keepalive_s,"
         "cause,confidence,evidence,fix").split(",")


def write_report(rec, path, writer_process=None):
    with OutFile(path) as out:
        return report.write_report(rec, out, writer_process=writer_process)


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_columns_exact_order(tmp_path):
    assert COLUMNS[:18] == FIRST
    write_report(FIX / "keepalive_lab.jsonl", tmp_path / "r.csv")
    header = (tmp_path / "r.csv").read_text().split("\n")[0].split(",")
    assert header[:18] == FIRST and "incident" in header[18:]


def test_rows_direction_and_cells(tmp_path):
    write_report(FIX / "keepalive_lab.jsonl", tmp_path / "r.csv")
    sent, rcv = read(tmp_path / "r.csv")
    assert sent["time"] == "2023-11-14T22:13:27.100Z"
    for row in (sent, rcv):   # src -> dst is the reset's own direction in both rows
        assert (row["src"], row["sport"], row["dst"], row["dport"]) == ("10.96.0.10", "3306", "10.0.1.2", "40000")
    assert sent["incident"] == rcv["incident"] and sent["cause"] == rcv["cause"] == "keepalive"
    assert (sent["direction"], rcv["direction"]) == ("sent", "recv")
    assert sent["pid"] == "" and sent["idle_s"] == "" and sent["state"] == ""
    assert rcv["idle_s"] == "7.002" and rcv["keepalive_s"] == ""   # keepalive off: empty
    assert rcv["netns_name"] == "cli" and rcv["comm"] == "mysql-client"
    assert "ip netns exec cli sysctl -w net.ipv4.tcp_keepalive_time=2" in rcv["fix"]


def test_formula_cells_neutralised(tmp_path):
    write_report(FIX / "full_table.jsonl", tmp_path / "r.csv")
    rows = read(tmp_path / "r.csv")
    assert rows[-1]["comm"] == "'=HYPERLINK(\"x\")"
    with OutFile(tmp_path / "n.csv") as out:
        csvout.write_table(["a"], [[v] for v in ["=1+1", "+x", "-2", "@SUM(A1)", "\tq", "\rz", "ok", None,
                                                 "a\x1b[31mb", 'q"uote,d', ""]], out)
    got = [r["a"] for r in read(tmp_path / "n.csv")]
    assert got == ["'=1+1", "'+x", "'-2", "'@SUM(A1)", "'\\x09q", "'\\x0dz", "ok", "", "a\\x1b[31mb", 'q"uote,d', ""]


@pytest.mark.parametrize("writer_process", [True, False])
def test_write_is_atomic(tmp_path, monkeypatch, writer_process):
    out = tmp_path / "r.csv"
    out.write_text("old\n")

    def boom(self, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(csvout.RowWriter, "close", boom)
    with pytest.raises(OSError):
        write_report(FIX / "keepalive_lab.jsonl", out, writer_process)
    assert out.read_text() == "old\n" and os.listdir(tmp_path) == ["r.csv"]


def test_stream_failure_leaves_nothing(tmp_path):
    # a header that does not validate fails the report once the CSV is open
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"header","schema":1,"hz":"fast"}\n')
    with pytest.raises(Exception) as e:
        write_report(bad, tmp_path / "r.csv")
    assert ":1:" in str(e.value)
    assert os.listdir(tmp_path) == ["bad.jsonl"]


def _bench_recording(tmp_path, n):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bench_report", Path(__file__).resolve().parents[2] / "bench" / "bench_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p = tmp_path / "bench.jsonl"
    mod.generate(p, n)
    return p


def test_writer_process_and_inline_agree_on_many_resets(tmp_path):
    rec = _bench_recording(tmp_path, 3000)
    df, summary = report_recording(rec)
    n, summary2 = write_report(rec, tmp_path / "forked.csv", True)
    n3, summary3 = write_report(rec, tmp_path / "inline.csv", False)
    assert n == n3 == len(df) == 3000
    assert (tmp_path / "forked.csv").read_bytes() == (tmp_path / "inline.csv").read_bytes()
    assert summary.text == summary2.text == summary3.text and summary.rows == summary2.rows


def test_summary_counts_match_the_rows(tmp_path):
    rec = _bench_recording(tmp_path, 3000)
    df, summary = report_recording(rec)
    s = summary.frame
    per_cause = {r.name: r.value for r in s[s["section"] == "cause"].itertuples()}
    assert per_cause == {k: int(v) for k, v in df["cause"].value_counts().items()}
    flows = df.groupby(["src", "sport", "dst"]).size()
    for r in s[s["section"] == "flow"].itertuples():
        src, rest = r.name.split(":", 1)
        sport, dst = rest.split(" -> ")
        assert flows[(src, int(sport), dst)] == r.value == flows.max()
    step = int(s[s["section"] == "time"]["detail"].iloc[0][:-1])
    bins = df["time"].dt.floor(f"{step}s").value_counts().sort_index()
    assert [int(v) for v in s[s["section"] == "time"]["value"]] == [int(v) for v in bins.values]
    assert f"3000 resets in {df['incident'].nunique()} incidents" in summary.text


@pytest.mark.parametrize("writer_process", [True, False])
def test_the_writer_process_is_used_where_asked(tmp_path, writer_process):
    with OutFile(tmp_path / "r.csv") as out:
        stream = report.CsvStream(out, writer_process=writer_process)
        assert stream._writer.forked is writer_process
        stream.close()
    assert (tmp_path / "r.csv").read_text() == ",".join(COLUMNS) + "\n"
