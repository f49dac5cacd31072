"""The live path of the classifier as the TUI and exporter drive it: one
record at a time, a tick at each record's time, a flush at the end."""

from rsttrace.analysis.classify import Classifier


def feed_live(records, c: Classifier | None = None) -> list:
    c = c or Classifier()
    out = []
    for r in records:
        out += c.feed(r)
        out += c.tick(r["t"])
    return out + c.flush()
