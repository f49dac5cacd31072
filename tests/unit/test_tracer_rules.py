"""Reading which firewall rules answer with a TCP reset, from what nft and
iptables-save print (captured from the real tools: tests/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsttrace.tracer.rules import parse_iptables_save, parse_nft_json

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_nft_rules_that_reset_with_their_text_and_handle():
    rules, xt = parse_nft_json((FIX / "nft_ruleset.json").read_text())
    assert [(r["family"], r["table"], r["chain"], r["handle"], r["text"], r["packets"]) for r in rules] == [
        ("ip", "t1", "forward", 3, "ip daddr 10.1.1.2 tcp dport { 3306, 3307 } reject with tcp reset", 0),
        ("ip", "t1", "forward", 4, "ip saddr 10.0.0.0/8 tcp dport 5432 reject with tcp reset", None),
        ("inet", "t2", "input", 2, "meta l4proto tcp reject with tcp reset", None),
    ]
    # the ICMP reject is left out; the iptables-nft REJECT is read with iptables-save
    assert xt == {"ip"} and all(r["source"] == "nft" for r in rules)


def test_iptables_save_rules_that_reset():
    rules = parse_iptables_save((FIX / "iptables_save.txt").read_text(), "ip")
    assert [(r["table"], r["chain"], r["packets"], r["text"]) for r in rules] == [
        ("filter", "INPUT", 1, "-A INPUT -p tcp -m tcp --dport 3306 -j REJECT --reject-with tcp-reset"),
        ("filter", "OUTPUT", 0, "-A OUTPUT -d 127.0.0.2/32 -p tcp -j REJECT --reject-with tcp-reset"),
    ]


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"nftables": [{"rule": {"expr": "x"}}]}',
                                  '{"nftables": [{"rule": {"expr": [{"reject": null}]}}]}'])
def test_nft_output_that_is_not_a_ruleset_gives_nothing(text):
    assert parse_nft_json(text)[0] == []
