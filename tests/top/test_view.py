"""`top`'s pure parts: filtering, sorting, formatting, and the schema's own checks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from openrtc import ProtocolError, SchemaVersionError
from openrtc.introspection.schema import LastBlock, from_dict
from openrtc.top.app import make_app
from openrtc.top.view import Filters, cpu_bar, fmt_age, render_text, select
from tests.top.fakes import row, source


def test_select_filters_and_sorts_slow_first() -> None:
    rows = [
        row("a", cpu_pct=5.0),
        row("b", cpu_pct=50.0, agent="voice"),
        row("c", cpu_pct=1.0, slow=True, blocks=2, last_block=LastBlock(300, 0, "x.py:3 in f")),
        row("d", state="failed", tenant="acme"),
    ]
    assert [r.session_id for r in select(rows, Filters(), "cpu")] == ["c", "b", "a", "d"]
    assert [r.session_id for r in select(rows, Filters(agent="voice"), "cpu")] == ["b"]
    assert [r.session_id for r in select(rows, Filters(status="failed"), "cpu")] == ["d"]
    assert [r.session_id for r in select(rows, Filters(tenant="acme"), "cpu")] == ["d"]
    assert [r.session_id for r in select(rows, Filters(search="x.py"), "cpu")] == ["c"]


def test_formatting_helpers() -> None:
    assert [fmt_age(s) for s in (5, 65, 3700)] == ["5s", "1m05s", "1h01m"]
    assert cpu_bar(0) == ".........." and cpu_bar(55) == "######...." and cpu_bar(250) == "##########"


def test_schema_version_mismatch_names_both_versions() -> None:
    with pytest.raises(SchemaVersionError, match="schema version 2; this openrtc reads version 1"):
        from_dict({"schema_version": 2})


@pytest.mark.parametrize(
    "doc",
    [[], {"schema_version": 1}, {"schema_version": 1, "at": 0, "worker": {}, "sessions": [], "blocks": []}],
)
def test_malformed_snapshots_are_errors_not_empty_views(doc: Any) -> None:
    with pytest.raises(ProtocolError):
        from_dict(doc)


def test_make_app_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="refresh_s"):
        make_app(source(), refresh_s=0)
    with pytest.raises(ValueError, match="sort must be one of"):
        make_app(source(), sort="nope")


def test_once_table_shows_pids_of_process_sessions() -> None:
    from tests.top.fakes import mixed_snapshot

    snap = mixed_snapshot()
    plain = render_text([snap], Filters(), "cpu")
    assert " PID " not in plain
    with_pids = replace(snap, sessions=[replace(r, pid=9000 + i) for i, r in enumerate(snap.sessions)])
    lines = render_text([with_pids], Filters(), "cpu").splitlines()
    assert lines[1].split()[:3] == ["SESSION", "PID", "AGENT"]
    assert lines[2].split()[:3] == ["3f2a9c01", "9000", "support"]
