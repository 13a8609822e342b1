"""Screenshots of the live view (pytest-textual-snapshot): `make snapshots-update` refreshes them after a
deliberate change of the look; the diff of the SVGs then shows the change for review."""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot

from openrtc.top.app import TopApp, make_app
from openrtc.top.source import Fetch
from tests.top.fakes import FOLDER, mixed_snapshot, source, view

SIZE = (160, 30)


def app_of(*views: Any) -> TopApp:
    return make_app(source(*views), refresh_s=3600.0)


async def loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, TopApp)
    while app.refreshes < 1:
        await pilot.pause(0.01)


def test_empty_state(snap_compare: Any) -> None:
    app = make_app(source(), refresh_s=3600.0)
    assert isinstance(app.source.fetch(), Fetch) and app.source.folder == FOLDER
    assert snap_compare(app, terminal_size=SIZE, run_before=loaded)


def test_one_worker_with_a_mix_of_states(snap_compare: Any) -> None:
    assert snap_compare(app_of(view(mixed_snapshot())), terminal_size=SIZE, run_before=loaded)


def test_pinned_ongoing_stall(snap_compare: Any) -> None:
    assert snap_compare(app_of(view(mixed_snapshot(stall=True))), terminal_size=SIZE, run_before=loaded)


def test_detail_panel(snap_compare: Any) -> None:
    assert snap_compare(
        app_of(view(mixed_snapshot())), terminal_size=SIZE, run_before=loaded, press=["enter", "_"]
    )


def test_search_and_filter(snap_compare: Any) -> None:
    assert snap_compare(
        app_of(view(mixed_snapshot())), terminal_size=SIZE, run_before=loaded, press=["a", "slash", *"c0f"]
    )


def test_help_overlay(snap_compare: Any) -> None:
    assert snap_compare(
        app_of(view(mixed_snapshot())), terminal_size=SIZE, run_before=loaded, press=["question_mark", "_"]
    )
