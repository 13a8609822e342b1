"""`top`'s pure parts: filtering, sorting, formatting, and the schema's own checks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from openrtc import ProtocolError, SchemaVersionError
from openrtc.introspection.schema import LastBlock, from_dict
from openrtc.introspection.selection import Filters
from openrtc.top.app import make_app
from openrtc.top.view import cpu_bar, fmt_age, render_text, select
from tests.top.fakes import row, source, usage


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


def test_sort_by_cost_puts_unknown_after_every_known_cost() -> None:
    rows = [
        row("none"),
        row("unknown", usage=usage(2, 900, 0, 40, None, unknown=2)),
        row("cheap", usage=usage(1, 500, 0, 20, 0.0001)),
        row("dear", usage=usage(9, 9000, 4096, 700, 0.02)),
        row("free", usage=usage(1, 100, 0, 10, 0.0)),
    ]
    assert [r.session_id for r in select(rows, Filters(), "cost")] == [
        "dear",
        "cheap",
        "free",
        "none",
        "unknown",
    ]


def test_once_table_drops_usage_columns_while_no_session_made_an_llm_call() -> None:
    from tests.top.fakes import mixed_snapshot

    snap = mixed_snapshot()
    header = render_text([snap], Filters(), "cpu").splitlines()[2].split()
    assert header[-10:-4] == ["IN", "OUT", "CACHE%", "COST", "CLASS", "KV"]
    bare = replace(
        snap, sessions=[replace(r, usage=None, token_class=None, kv_bytes=None) for r in snap.sessions]
    )
    header = render_text([bare], Filters(), "cpu").splitlines()[2].split()
    assert (
        "IN" not in header
        and "CLASS" not in header
        and header[-5:] == ["BLOCKS", "LAST", "BLOCK", "/", "ERROR"]
    )


def test_classes_and_kv_in_the_once_table_the_header_and_the_filter() -> None:
    from tests.top.fakes import mixed_snapshot

    snap = mixed_snapshot()
    lines = render_text([snap], Filters(), "cpu").splitlines()
    assert lines[1].endswith("classes light 1 medium 1  kv 2.84GB")
    support = next(line for line in lines if line.startswith("3f2a9c01"))
    assert "light" in support.split() and "2.53GB" in support.split()
    chat = next(line for line in lines if line.startswith("c0ffee11"))
    assert "medium" in chat.split() and "306.0MB" in chat.split()
    only = render_text([snap], Filters(token_class="medium"), "cpu").splitlines()
    assert [line.split()[0] for line in only[3:] if line] == ["c0ffee11"]


def test_cost_text_never_shows_a_guess() -> None:
    from openrtc.top.view import cost_text

    assert cost_text(None) == "" and cost_text(usage(0, 0, 0, 0, None)) == ""
    assert cost_text(usage(2, 900, 0, 40, None, unknown=2)) == "?"
    assert cost_text(usage(3, 900, 0, 40, 0.000364, unknown=1)) == "$0.000364?"
    assert cost_text(usage(3, 900, 0, 40, 12.5)) == "$12.50"
    assert cost_text(usage(3, 900, 0, 40, 0.0000001)) == "<$0.000001"


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
    assert lines[1].split()[:2] == ["llm", "calls"]  # the worker's usage line, under its header
    assert lines[2].split()[:3] == ["SESSION", "PID", "AGENT"]
    assert lines[3].split()[:3] == ["3f2a9c01", "9000", "support"]
