"""docs/EVENTS.md's tables are the catalog's: the committed page is what
`python -m rsttrace.schema.docs` makes from it."""

from __future__ import annotations

import dataclasses

import pytest

from rsttrace.schema import catalog as cat
from rsttrace.schema import docs


def test_committed_page_is_up_to_date():
    page = docs.PAGE.read_text()
    assert docs.render(page) == page, "docs/EVENTS.md is stale: run python -m rsttrace.schema.docs"
    assert docs.main(["--check"]) == 0


def test_every_table_is_on_the_page():
    page = docs.PAGE.read_text()
    for name in docs.tables():
        assert f"<!-- generated: {name} -->" in page


def test_a_changed_field_changes_the_page(tmp_path, monkeypatch, capsys):
    page = tmp_path / "EVENTS.md"
    page.write_text(docs.PAGE.read_text())
    reset = dataclasses.replace(cat.RESET, fields=tuple(
        dataclasses.replace(f, doc="something else entirely") if f.name == "idle_ms" else f
        for f in cat.RESET.fields))
    monkeypatch.setattr(cat, "EVENTS", (reset,) + cat.EVENTS[1:])
    assert docs.main(["--check", str(page)]) == 1
    assert "not up to date" in capsys.readouterr().err
    assert docs.main([str(page)]) == 0
    assert "something else entirely" in page.read_text() and docs.main(["--check", str(page)]) == 0


def test_unknown_table_is_an_error():
    with pytest.raises(KeyError):
        docs.render("<!-- generated: nope -->\n<!-- end generated -->")


@pytest.mark.parametrize("t,text", [
    (cat.U32, "int"), (cat.U32 | None, "int/null"), (str | None, "str/null"), (bool, "bool"),
    (cat.NUM, "number"), (cat.RESET["dir"].type, '`"sent"` / `"recv"`'),
    (cat.RESET["cgroup_of"].type, '`"owner"` / `"socket"` / null'), (dict[str, cat.U64] | None, "object/null"),
])
def test_type_text(t, text):
    assert docs.type_text(t) == text
