"""The live view driven with Textual's Pilot over fixed snapshots (no sockets: see test_live.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from textual.binding import Binding
from textual.pilot import Pilot
from textual.widgets import Static

from openrtc.introspection.schema import SelectionInfo
from openrtc.introspection.selection import Filters, Selection
from openrtc.top.app import ConfirmScreen, HelpScreen, SessionScreen, TopApp, make_app
from openrtc.top.source import Fetch
from openrtc.top.table import SessionTable
from tests.top.fakes import FOLDER, FakeSource, bumped, mixed_snapshot, source, view

SIZE = (160, 30)
pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def running(src: FakeSource, **kw: Any) -> AsyncIterator[tuple[TopApp, Pilot[None]]]:
    # A long refresh period: the tests decide when a refresh happens.
    app = make_app(src, refresh_s=kw.pop("refresh_s", 3600.0), **kw)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.refreshes >= 1)
        yield app, pilot


async def until(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.01)


def text_of(app: TopApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def shown_ids(app: TopApp) -> list[str]:
    table = app.query_one("#sessions", SessionTable)
    return [str(table.cells_of(i)[1]) for i in range(table.row_count)]


async def test_empty_state_names_the_folder_and_keeps_looking() -> None:
    src = FakeSource([Fetch(FOLDER, ()), Fetch(FOLDER, (view(mixed_snapshot()),))])
    async with running(src) as (app, _):
        assert app.query_one("#empty").display and not app.query_one("#sessions").display
        empty = text_of(app, "#empty")
        assert "No openrtc worker is running" in empty
        assert str(FOLDER) in empty and "openrtc dev ./agents" in empty
        await app.refresh_now()  # a worker appears: the table replaces the message
        assert not app.query_one("#empty").display and app.query_one("#sessions").display
        assert len(shown_ids(app)) == 6


async def test_empty_state_with_one_socket_names_the_socket() -> None:
    sock = FOLDER / "nonexistent"
    async with running(FakeSource([Fetch(FOLDER, (), sock)])) as (app, _):
        empty = text_of(app, "#empty")
        assert f"Nothing answers on {sock}" in empty and "Searched" not in empty


async def test_one_worker_with_a_mix_of_states() -> None:
    async with running(source(view(mixed_snapshot()))) as (app, _):
        header = text_of(app, "#workers")
        assert "worker box:4242" in header and "uvloop/coroutine" in header and "sessions 6/200" in header
        assert "lag p50 0.4ms p99 3.1ms" in header and "sampler 50/50Hz" in header
        # The slow session first, then by CPU.
        assert shown_ids(app) == ["3f2a9c01", "8b1d0e77", "c0ffee11", "d00d0044", "e1e1e177", "f4f4f4aa"]
        table = app.query_one("#sessions", SessionTable)
        row = table.cells_of(0)
        first = [str(c) for c in row]
        assert first[:6] == ["4242", "3f2a9c01", "-", "support", "acme", "running!"]
        assert (row.last, row.slow, row.state_value) == (
            "320ms agents/support.py:14 in lookup",
            True,
            "running",
        )
        assert not app.query_one("#stall").display
        assert "6 of 6 sessions" in text_of(app, "#status")


async def test_refresh_redraws_only_rows_that_changed() -> None:
    first = mixed_snapshot()
    rows = list(first.sessions)
    rows[1] = replace(rows[1], cpu_pct=25.0)  # one row changes; the last one leaves
    second = replace(first, sessions=rows[:-1])
    src = FakeSource([Fetch(FOLDER, (view(first),)), Fetch(FOLDER, (view(second),))])
    async with running(src) as (app, pilot):
        table = app.query_one("#sessions", SessionTable)
        await pilot.pause()
        drawn = table.lines_drawn
        assert drawn == 6  # every row on screen, once
        await app.refresh_now()
        await pilot.pause()
        assert table.lines_drawn == drawn + 1 and table.cells_of(1)[7] == "25.0"
        assert shown_ids(app) == ["3f2a9c01", "8b1d0e77", "c0ffee11", "d00d0044", "e1e1e177"]
        await app.refresh_now()  # the same data again: nothing redrawn
        await pilot.pause()
        assert table.lines_drawn == drawn + 1


async def test_only_rows_on_screen_are_drawn() -> None:
    many = replace(
        mixed_snapshot(),
        sessions=[replace(mixed_snapshot().sessions[2], session_id=f"{i:012x}") for i in range(5000)],
    )
    async with running(source(view(many))) as (app, pilot):
        table = app.query_one("#sessions", SessionTable)
        await pilot.pause()
        assert table.row_count == 5000 and table.lines_drawn < 40
        await pilot.press("end")
        await pilot.pause()
        assert table.cursor == 4999 and table.lines_drawn < 80
        assert app.selected() is not None and app.selected()[1].session_id == f"{4999:012x}"


async def test_cursor_follows_its_session_when_rows_reorder() -> None:
    first = mixed_snapshot()
    rows = list(first.sessions)
    rows[2] = replace(rows[2], cpu_pct=90.0)  # c0ffee11 jumps above 8b1d0e77
    src = FakeSource([Fetch(FOLDER, (view(first),)), Fetch(FOLDER, (view(replace(first, sessions=rows)),))])
    async with running(src) as (app, pilot):
        await pilot.press("down", "down")
        assert app.selected() is not None and app.selected()[1].session_id == "c0ffee112233"
        await app.refresh_now()
        assert shown_ids(app)[:3] == ["3f2a9c01", "c0ffee11", "8b1d0e77"]
        assert app.selected()[1].session_id == "c0ffee112233"


async def test_process_sessions_show_their_pid() -> None:
    snap = mixed_snapshot()
    snap = replace(snap, sessions=[replace(r, pid=9000 + i) for i, r in enumerate(snap.sessions)])
    async with running(source(view(snap))) as (app, _):
        table = app.query_one("#sessions", SessionTable)
        assert table.cells_of(0)[1:3] == ("3f2a9c01", "9000") and 2 not in table._hidden


async def test_usage_columns_show_only_once_a_session_has_made_an_llm_call() -> None:
    from openrtc.top.render import USAGE_INDEXES

    with_llm = mixed_snapshot()
    without = replace(with_llm, sessions=[replace(r, usage=None) for r in with_llm.sessions])
    async with running(FakeSource([Fetch(FOLDER, (view(without),)), Fetch(FOLDER, (view(with_llm),))])) as (
        app,
        _,
    ):
        table = app.query_one("#sessions", SessionTable)
        assert len(USAGE_INDEXES) == 4 and set(USAGE_INDEXES) <= table._hidden
        await app.refresh_now()
        assert not set(USAGE_INDEXES) & table._hidden


async def test_l_steps_through_the_classes_present_and_their_columns_show_only_with_them() -> None:
    from openrtc.top.render import CLASS_INDEX, KV_INDEX

    with_classes = mixed_snapshot()
    without = replace(
        with_classes, sessions=[replace(r, token_class=None, kv_bytes=None) for r in with_classes.sessions]
    )
    src = FakeSource([Fetch(FOLDER, (view(without),)), Fetch(FOLDER, (view(with_classes),))])
    async with running(src) as (app, pilot):
        table = app.query_one("#sessions", SessionTable)
        assert {CLASS_INDEX, KV_INDEX} <= table._hidden
        await app.refresh_now()
        assert not {CLASS_INDEX, KV_INDEX} & table._hidden
        await pilot.press("l")
        assert app.filters.token_class == "light" and shown_ids(app) == ["3f2a9c01"]
        await pilot.press("l")
        assert app.filters.token_class == "medium" and shown_ids(app) == ["c0ffee11"]
        await pilot.press("l")
        assert app.filters.token_class is None and len(shown_ids(app)) == 6


async def test_an_ongoing_stall_is_pinned_with_its_line() -> None:
    async with running(source(view(mixed_snapshot(stall=True)))) as (app, _):
        assert app.query_one("#stall").display
        stall = text_of(app, "#stall")
        assert "STALL NOW 1,840 ms" in stall
        assert "session 3f2a9c01d4e5 (support)" in stall and "agents/support.py:14 in lookup" in stall


async def test_enter_opens_the_session_with_its_blocks_and_stacks() -> None:
    async with running(source(view(mixed_snapshot()))) as (app, pilot):
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, SessionScreen))
        detail = text_of(app, "#detail")
        assert "session 3f2a9c01d4e5" in detail and "tenant     acme" in detail
        assert "cpu time   12.300s since start" in detail
        assert "recent blocks (2 in the worker's last 100)" in detail
        assert detail.count("agents/support.py:31 in run") == 2  # both blocks with their stacks
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, SessionScreen))


async def test_a_failed_session_shows_its_error_in_the_table_and_details() -> None:
    async with running(source(view(mixed_snapshot()))) as (app, pilot):
        table = app.query_one("#sessions", SessionTable)
        (row,) = [table.cells_of(i) for i in range(table.row_count) if table.cells_of(i)[1] == "e1e1e177"]
        assert row.last == "RuntimeError: boom from crasher"
        await pilot.press("f", "f", "f", "f", "enter")  # state=failed, then its details
        await until(pilot, lambda: isinstance(app.screen, SessionScreen))
        assert "error      RuntimeError: boom from crasher" in text_of(app, "#detail")


async def test_q_quits_from_the_details_and_the_footer_says_so() -> None:
    async with running(source(view(mixed_snapshot()))) as (app, pilot):
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, SessionScreen))
        keys = {b.key: b.description for b in app.screen.BINDINGS if isinstance(b, Binding)}
        assert keys == {"escape": "back", "k": "cancel session", "r": "profile", "q": "quit"}
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)


async def test_search_filters_and_escape_clears() -> None:
    async with running(source(view(mixed_snapshot()))) as (app, pilot):
        await pilot.press("slash", *"globex")
        assert shown_ids(app) == ["c0ffee11", "e1e1e177"]
        assert "search=globex" in text_of(app, "#status") and "2 of 6 sessions" in text_of(app, "#status")
        await pilot.press("enter")  # applies and hands the keys back to the table
        assert app.query_one("#sessions").has_focus
        await pilot.press("slash", "escape")
        assert len(shown_ids(app)) == 6
        await pilot.press("slash", *"support.py:14", "slash")  # a `/` in the box is text, not a new search
        assert app.filters.search == "support.py:14/" and shown_ids(app) == []
        await pilot.press("backspace")
        assert shown_ids(app) == ["3f2a9c01"]


async def test_filter_keys_cycle_state_agent_tenant_and_clear() -> None:
    async with running(source(view(mixed_snapshot()))) as (app, pilot):
        await pilot.press("a")  # agents present, alphabetically: chat first
        assert app.filters == Filters(agent="chat") and shown_ids(app) == ["c0ffee11", "d00d0044", "f4f4f4aa"]
        await pilot.press("t")
        assert app.filters == Filters(agent="chat", tenant="acme") and shown_ids(app) == ["f4f4f4aa"]
        await pilot.press("x", "f")
        assert app.filters == Filters(status="starting") and shown_ids(app) == ["d00d0044"]
        seen = []
        for _ in range(4):  # only the states some session is in, in life-cycle order, then all
            await pilot.press("f")
            seen.append(app.filters.status)
        assert seen == ["running", "ended", "failed", None] and len(shown_ids(app)) == 6


async def test_sort_keys() -> None:
    async with running(source(view(mixed_snapshot()))) as (app, pilot):
        await pilot.press("o")  # age: the slow one first, then live ones oldest first, finished ones last
        assert app.sort == "age"
        assert shown_ids(app) == ["3f2a9c01", "8b1d0e77", "c0ffee11", "d00d0044", "f4f4f4aa", "e1e1e177"]
        await pilot.press("n")
        assert app.sort == "agent"
        assert shown_ids(app) == ["3f2a9c01", "c0ffee11", "d00d0044", "8b1d0e77", "f4f4f4aa", "e1e1e177"]
        await pilot.press("s")  # cycles on from agent back to cpu
        assert app.sort == "cpu"
        await pilot.press("dollar_sign")  # no call yet is a known $0; c0ffee11's unknown price goes after it
        assert app.sort == "cost" and shown_ids(app)[:4] == ["3f2a9c01", "8b1d0e77", "d00d0044", "c0ffee11"]


async def test_k_cancels_after_confirmation_only() -> None:
    src = source(view(mixed_snapshot()))
    async with running(src) as (app, pilot):
        await pilot.press("down", "k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert src.cancelled == []
        await pilot.press("k", "y")
        await until(pilot, lambda: bool(src.cancelled))
        assert src.cancelled == [(FOLDER / "4242.sock", "8b1d0e77aa01")]


async def test_r_records_a_profile_of_the_selected_session_and_the_details_offer_it() -> None:
    src = source(view(mixed_snapshot()))
    async with running(src) as (app, pilot):
        await pilot.press("down", "r")
        await until(pilot, lambda: bool(src.profiled))
        assert src.profiled == [(FOLDER / "4242.sock", "8b1d0e77aa01", 5.0)]
        told = lambda: any("/profiles/8b1d0e77aa01.svg" in str(n.message) for n in app._notifications)  # noqa: E731
        await until(pilot, told)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, SessionScreen))
        assert "profile    /profiles/8b1d0e77aa01.svg (" in text_of(app, "#detail")
        await pilot.press("escape", "f", "f", "f", "f")  # state=failed: a finished session
        await until(pilot, lambda: shown_ids(app) == ["e1e1e177"])
        await pilot.press("r")  # it has ended: the profile is of its worker
        await until(pilot, lambda: len(src.profiled) == 2)
        assert src.profiled[1] == (FOLDER / "4242.sock", None, 5.0)


async def test_pause_stops_refreshing() -> None:
    src = source(view(mixed_snapshot()))
    async with running(src, refresh_s=0.05) as (app, pilot):
        await until(pilot, lambda: src.calls >= 3)
        await pilot.press("p")
        await pilot.pause(0.1)
        calls = src.calls
        await pilot.pause(0.3)
        assert src.calls == calls and "PAUSED" in text_of(app, "#status")
        await pilot.press("p")
        await until(pilot, lambda: src.calls > calls)


async def test_gone_worker_and_schema_mismatch_are_said() -> None:
    error = "worker sends snapshot schema version 2; this openrtc reads version 1: upgrade the older side"
    src = source(
        view(mixed_snapshot(), gone=True, error="the worker exited"),
        view(None, name="777.sock", error=error),
    )
    async with running(src) as (app, _):
        header = text_of(app, "#workers")
        assert "GONE worker box:4242" in header and "(the worker exited)" in header
        assert f"worker 777.sock: {error}" in header
        assert shown_ids(app) == []


async def test_two_workers_merge_with_a_worker_column_and_w_focuses_one() -> None:
    other = bumped(mixed_snapshot(pid=5151), cpu_pct=0.0)
    other = replace(other, sessions=[replace(r, session_id="9" + r.session_id[1:]) for r in other.sessions])
    async with running(source(view(mixed_snapshot()), view(other, name="5151.sock"))) as (app, pilot):
        table = app.query_one("#sessions", SessionTable)
        assert table.row_count == 12
        assert {table.cells_of(i)[0] for i in range(12)} == {"4242", "5151"}
        await pilot.press("w")
        assert table.row_count == 6 and {table.cells_of(i)[0] for i in range(6)} == {"4242"}
        await pilot.press("w")
        assert {table.cells_of(i)[0] for i in range(6)} == {"5151"}
        await pilot.press("w")
        assert table.row_count == 12


async def test_help_lists_the_keys() -> None:
    async with running(source(view(mixed_snapshot()))) as (app, pilot):
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_text = text_of(app, "#help")
        assert "k cancel (asks first)" in help_text
        # One line per paragraph, wrapped by the screen (the look is pinned in test_snapshots.py).
        assert "A stall in progress is pinned above the table" in help_text
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_a_failing_source_is_reported_not_fatal() -> None:
    class Broken(FakeSource):
        def fetch(self, want: Selection | None = None) -> Fetch:
            if self.calls == 1:
                self.calls += 1
                raise RuntimeError("disk on fire")
            return super().fetch(want)

    src = Broken([Fetch(FOLDER, (view(mixed_snapshot()),))])
    async with running(src) as (app, _):
        await app.refresh_now()  # fails: reported, the table stays
        assert app.refreshes == 1 and len(shown_ids(app)) == 6
        await app.refresh_now()
        assert app.refreshes == 2 and len(shown_ids(app)) == 6


async def test_a_cursor_on_the_first_row_stays_at_the_top() -> None:
    first = mixed_snapshot()
    rows = list(first.sessions)
    rows[2] = replace(rows[2], cpu_pct=90.0, slow=True)  # c0ffee11 overtakes the first row
    src = FakeSource([Fetch(FOLDER, (view(first),)), Fetch(FOLDER, (view(replace(first, sessions=rows)),))])
    async with running(src) as (app, _):
        assert app.selected() is not None and app.selected()[1].session_id == "3f2a9c01d4e5"
        await app.refresh_now()
        assert app.selected()[1].session_id == "c0ffee112233"  # the new top, not the old row


async def test_the_view_asks_each_worker_for_the_rows_it_can_show() -> None:
    """The source gets the view's sort, filters and a row count from the table's height; the filter
    keys step through the values the worker says it has, not only those in the rows it sent."""
    snapshot = dataclasses.replace(
        mixed_snapshot(),
        selection=SelectionInfo(
            "cpu",
            100,
            9,
            9,
            {},
            {"agent": ["aardvark", "chat"], "tenant": [], "token_class": [], "status": []},
        ),
    )
    src = source(view(snapshot))
    async with running(src) as (app, pilot):
        first = src.wants[0]
        assert first is not None and (first.sort, first.filters) == ("cpu", Filters()) and first.limit >= 100
        await pilot.press("o")
        await until(pilot, lambda: src.wants[-1] == Selection("age", first.limit, Filters()))
        await pilot.press("a")  # the first agent the worker has, though none of its rows is one
        assert app.filters == Filters(agent="aardvark") and shown_ids(app) == []
        await until(pilot, lambda: src.wants[-1] == Selection("age", first.limit, Filters(agent="aardvark")))
        assert "6 of 9 sessions" not in text_of(app, "#status")  # the filter hides them all
        await pilot.press("x")
        await until(pilot, lambda: "6 of 9 sessions" in text_of(app, "#status"))
