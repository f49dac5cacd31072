"""Fixture recordings replayed through the report give their expected verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rsttrace.analysis.report import report_recording

FIX = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTED = json.loads((FIX / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_verdicts(name):
    df, summary = report_recording(FIX / name)
    got = []
    for inc, g in df.groupby("incident", sort=False):
        first = g.iloc[0]
        assert g["cause"].nunique() == 1    # rows of one incident share its cause
        got.append({"cause": first["cause"], "confidence": first["confidence"], "rows": len(g),
                    "sender_netns": None if first["sender_netns"] is None or str(first["sender_netns"]) == "<NA>"
                    else int(first["sender_netns"]),
                    "receiver_netns": None if str(first["receiver_netns"]) == "<NA>" else int(first["receiver_netns"])})
    assert got == EXPECTED[name]


def test_truncated_fixture_warns():
    _, summary = report_recording(FIX / "ipvs_mismatch_truncated.jsonl")
    assert any("cut off" in w for w in summary.warnings)


def test_full_table_summary_names_namespace():
    _, summary = report_recording(FIX / "full_table.jsonl")
    assert "table full at" in summary.text and "netns lb (4026532247)" in summary.text
    assert "drop +16" in summary.text
    assert "nf_conntrack_max" in summary.text


def test_analysis_imports_neither_bcc_nor_textual():
    code = ("import sys, rsttrace.analysis.classify, rsttrace.analysis.report, rsttrace.analysis.config;"
            "bad=[m for m in ('bcc','textual') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
