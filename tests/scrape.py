"""HTTP from the tests to the exporter and the agent: a GET that returns
the status instead of raising, and a scrape as {(name, labels): value}."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families


def get(url: str, timeout: float = 5) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def scrape(base: str, check: Callable[[str, dict[str, str]], dict[str, str]] | None = None
           ) -> dict[tuple[str, tuple], float]:
    """Every sample of `base`/metrics; `check` may look at (and return
    changed) each sample's labels."""
    status, body = get(base + "/metrics")
    assert status == 200, body
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            labels = dict(s.labels) if check is None else check(s.name, dict(s.labels))
            out[(s.name, tuple(sorted(labels.items())))] = s.value
    return out
