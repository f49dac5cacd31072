"""The names the analysis speaks in (analysis/vocab.py): plain strings to
every reader, one definition to the code."""

from __future__ import annotations

import json

import pytest

from rsttrace.analysis import classify
from rsttrace.analysis.vocab import CAUSES, Cause, FindingKey


def test_a_cause_is_its_name_everywhere_it_is_written():
    c = Cause.KEEPALIVE
    assert c == "keepalive" and hash(c) == hash("keepalive") and {"keepalive": 1}[c] == 1
    assert f"{c}" == str(c) == "keepalive" and json.dumps({c: c}) == '{"keepalive": "keepalive"}'
    assert FindingKey("no_margin") is FindingKey.NO_MARGIN


def test_causes_are_in_the_classifiers_order_of_precedence():
    # the module's docstring states the order; CAUSES is the enum's order
    order = classify.__doc__.split("first match wins")[1].split(".")[0]
    named = [w.strip(" \n:`") for w in order.replace("\n", " ").split(">")]
    assert [n.split()[-1] for n in named] == list(CAUSES)


@pytest.mark.parametrize("module", ["rsttrace.lab.scenarios", "rsttrace.lab.ipvs"])
def test_lab_scenarios_expect_causes_the_classifier_has(module):
    import importlib
    scenarios = importlib.import_module(module).SCENARIOS
    expects = [s.expect.cause for s in (scenarios.values() if isinstance(scenarios, dict) else scenarios)]
    assert expects and {c for c in expects if c is not None} <= set(CAUSES)
