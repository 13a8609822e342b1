"""README's CLI and snapshot references are exactly what the code says."""

from pathlib import Path

from openrtc.cli.reference import BEGIN, END, SCHEMA_BEGIN, SCHEMA_END, field_docs, render_readme
from openrtc.introspection.schema import SessionRow

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_references_are_current() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text and SCHEMA_BEGIN in text and SCHEMA_END in text
    assert render_readme(text) == text, "run: python -m openrtc.cli.reference --write"


def test_every_schema_field_has_a_docstring() -> None:
    from dataclasses import fields

    from openrtc.introspection import schema

    for cls in (schema.Snapshot, schema.WorkerInfo, schema.LoopLag, schema.IntrospectionInfo, SessionRow):
        docs = field_docs(cls)
        assert [f.name for f in fields(cls)] == list(docs), cls
    assert field_docs(SessionRow)["cpu_s"] == "Seconds its code held the loop thread since it started."
