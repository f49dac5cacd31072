"""rsttrace.schema: what a record is, the recording format and its reader.

Neutral ground between the tracer, which writes records, and the analysis,
the TUI and the reports, which read them: both import this package; it
imports neither (nor bcc, numpy or textual).

- `catalog`: every field of every record, defined once;
- `validate`: the reader's table (field -> type), made from the catalog;
- `recording`: JSON Lines recordings: writer, reader, batch reader;
- `docs`: the tables of docs/EVENTS.md, made from the catalog.
"""

from .catalog import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION"]
