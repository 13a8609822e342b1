"""`openrtc top`: the live Textual view over the workers' snapshots.

The app reads only through a `Source` (the real sockets, or fixed snapshots in tests), fetched from a
thread so a slow worker never freezes the screen. Each refresh updates the session table in place: rows
that left are removed, new rows added, changed cells rewritten, then the rows are re-ranked with one
sort; the table itself only renders what is on screen, which keeps 10,000 sessions smooth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Input, Static

from openrtc.errors import ConfigError, OpenRTCError
from openrtc.introspection.schema import SessionRow, Snapshot
from openrtc.introspection.selection import SORT_KEYS, STATES, Filters, Selection
from openrtc.top.render import (
    CLASS_INDEX,
    COLUMNS,
    KV_INDEX,
    USAGE_INDEXES,
    detail_text,
    help_text,
    stall_text,
    style_row,
    worker_label,
)
from openrtc.top.screens import ConfirmScreen, HelpScreen, SessionScreen
from openrtc.top.source import Fetch, Source, WorkerView
from openrtc.top.table import SessionTable
from openrtc.top.view import (
    TablePlan,
    has_usage,
    ongoing_stall,
    plan_table,
    worker_line,
)

__all__ = ["ConfirmScreen", "HelpScreen", "SessionScreen", "TopApp", "make_app"]

MIN_ROWS = 100
"""The fewest rows the live view asks each worker for."""

PROFILE_SECONDS = 5.0
"""How long `r` records."""
NO_PROFILE = f"none yet (r records a {PROFILE_SECONDS:g} s CPU profile)"


class TopApp(App[None]):
    """The live view. Build it with `make_app`."""

    TITLE = "openrtc top"
    AUTO_FOCUS = None  # `apply` focuses the table once it has something to show
    CSS = """
    #workers { height: auto; padding: 0 1; }
    #stall { height: auto; padding: 0 1; display: none; }
    #status { height: 1; padding: 0 1; background: $boost; }
    #empty { height: 1fr; content-align: center middle; display: none; }
    #search { display: none; }
    #sessions { height: 1fr; }
    #help, #confirm { width: auto; max-width: 100; height: auto; padding: 1 2; border: thick $accent;
                      background: $surface; }
    HelpScreen, ConfirmScreen { align: center middle; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        # A priority binding runs before the key reaches the focused table, so the keys typed right
        # after `/` (already queued, or pasted) land in the search box rather than in the table.
        Binding("slash", "search", "search", priority=True),
        Binding("s", "cycle_sort", "sort"),
        Binding("f", "cycle_filter('status')", "state"),
        Binding("a", "cycle_filter('agent')", "agent"),
        Binding("t", "cycle_filter('tenant')", "tenant"),
        Binding("l", "cycle_filter('token_class')", "class", show=False),
        Binding("w", "cycle_worker", "worker"),
        Binding("x", "clear_filters", "clear"),
        Binding("k", "cancel_session", "cancel"),
        Binding("r", "profile", "profile"),
        Binding("p", "toggle_pause", "pause"),
        Binding("c", "sort('cpu')", "CPU", show=False),
        Binding("m", "sort('mem')", "memory", show=False),
        Binding("o", "sort('age')", "age", show=False),
        Binding("b", "sort('blocks')", "blocks", show=False),
        Binding("dollar_sign", "sort('cost')", "cost", show=False),
        Binding("n", "sort('agent')", "agent", show=False),
    ]

    def __init__(self, source: Source, refresh_s: float, sort: str, filters: Filters) -> None:
        super().__init__()
        self.source = source
        self.refresh_s = refresh_s
        self.sort = sort
        self.filters = filters
        self.worker_focus: Path | None = None
        """Only this worker's sessions; None shows all workers merged."""
        self.paused = False
        self.fetch: Fetch | None = None
        self.refreshes = 0
        """Refreshes applied so far (tests wait on it)."""
        self._where: dict[str, tuple[WorkerView, SessionRow]] = {}
        self.last_profiles: dict[str, str] = {}
        """The last CPU profile recorded from here, per session key (`socket|id`) and per worker socket."""
        self._fetching = False

    # -- layout -----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(id="workers")
            yield Static(id="stall")
            yield Static(id="status")
            yield Input(
                placeholder="search id, agent, tenant or blocking line; enter applies, esc clears",
                id="search",
            )
            yield Static(id="empty")
            yield SessionTable(COLUMNS, style_row, id="sessions")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.refresh_s, self._tick)
        self._tick()

    # -- data -------------------------------------------------------------------------------------

    def _tick(self) -> None:
        if not self.paused and not self._fetching:
            self.run_worker(self.refresh_now(), group="fetch", exclusive=False)

    async def refresh_now(self) -> None:
        """Fetch from the source (in a thread) and show the result."""
        if self._fetching:
            return
        self._fetching = True
        try:
            fetch, plan = await asyncio.to_thread(self._fetch_and_plan, self.want())
        except Exception as exc:
            # A source bug must not kill the view: say it and try again at the next tick.
            self.notify(f"refresh failed: {type(exc).__name__}: {exc}", severity="error")
            return
        finally:
            self._fetching = False
        if not self.is_running:
            return  # the app began shutting down while the thread worked: its widgets are going away
        if plan[0] != self._plan_inputs():  # a key changed the filters meanwhile: plan again
            plan = (self._plan_inputs(), self._plan(fetch))
        self.apply(fetch, plan[1])

    def _plan_inputs(self) -> tuple[Filters, str, Path | None]:
        return (self.filters, self.sort, self.worker_focus)

    def _plan(self, fetch: Fetch) -> TablePlan:
        live = [(v.socket_path, v.snapshot) for v in fetch.workers if v.snapshot is not None and not v.gone]
        return plan_table(live, self.filters, self.sort, self.worker_focus)

    def want(self) -> Selection:
        """What to ask each worker for: the rows the table can show from here (its height past the
        cursor, twice over, and never fewer than `MIN_ROWS`) under the current sort and filters."""
        table = self.query_one("#sessions", SessionTable)
        limit = max(MIN_ROWS, table.cursor + 2 * max(1, table.size.height))
        return Selection(self.sort, limit, self.filters)

    def _fetch_and_plan(
        self, want: Selection
    ) -> tuple[Fetch, tuple[tuple[Filters, str, Path | None], TablePlan]]:
        # Runs in a thread: the socket reads and the formatting of every row stay off the UI.
        fetch = self.source.fetch(want)
        inputs = self._plan_inputs()
        return fetch, (inputs, self._plan(fetch))

    def apply(self, fetch: Fetch, plan: TablePlan | None = None) -> None:
        """Show `fetch`: headers, the pinned stall, and the table updated in place."""
        self.fetch = fetch
        self.refreshes += 1
        views = {v.socket_path: v for v in fetch.workers}
        self._show_workers(fetch)
        self._show_stalls(v for v in fetch.workers if self.worker_focus in (None, v.socket_path))
        self._update_table(plan if plan is not None else self._plan(fetch), views)
        self._show_status()
        screen = self.screen
        if isinstance(screen, SessionScreen):
            found = self._where.get(screen.key)
            if found is not None and found[0].snapshot is not None:
                last = self.last_profiles.get(screen.key, NO_PROFILE)
                screen.show(detail_text(found[0], found[1], found[0].snapshot, last))

    def _show_workers(self, fetch: Fetch) -> None:
        empty = self.query_one("#empty", Static)
        table = self.query_one("#sessions", SessionTable)
        headers = self.query_one("#workers", Static)
        if not fetch.workers:
            if fetch.fleet is not None:
                head, where = "No worker in the fleet.\n\n", f"Read the fleet view at {fetch.fleet}.\n"
            elif fetch.socket is not None:
                head, where = "No worker answers.\n\n", f"Nothing answers on {fetch.socket}.\n"
            else:
                head, where = (
                    "No openrtc worker is running.\n\n",
                    f"Searched {fetch.folder} for worker sockets.\n",
                )
            empty.update(
                Text.assemble(
                    (head, "bold"),
                    where,
                    "Start one with:  openrtc dev ./agents   (or: openrtc demo)\n\n",
                    (f"Still looking every {self.refresh_s:g}s. Press q to quit.", "dim"),
                    justify="center",
                )
            )
        empty.display = not fetch.workers
        table.display = bool(fetch.workers)
        # Focus decides which keys the footer lists: set it here, the same on every Python and timing.
        main = table.screen  # not `self.screen`: a detail or confirmation screen may be on top
        if table.display and main.focused is None:
            main.set_focus(table)
        elif not table.display and main.focused is table:
            main.set_focus(None)
        text = Text()
        for i, view in enumerate(fetch.workers):
            if i:
                text.append("\n")
            focus = "> " if self.worker_focus == view.socket_path else ""
            if view.snapshot is None:
                text.append(f"{focus}worker {view.socket_path.name}: {view.error}", style="bold red")
                continue
            line = worker_line(view.snapshot)
            if view.gone:
                text.append(f"{focus}GONE ", style="bold red")
                text.append(f"{line}  ({view.error})", style="dim strike")
            else:
                text.append(focus + line, style="bold" if view.snapshot.worker.draining else "")
        headers.update(text)

    def _show_stalls(self, views: Iterable[WorkerView]) -> None:
        stall = self.query_one("#stall", Static)
        lines = []
        for view in views:
            if view.snapshot is not None and not view.gone:
                block = ongoing_stall(view.snapshot)
                if block is not None:
                    lines.append(stall_text(view, block))
        stall.update(Text("\n").join(lines))
        stall.display = bool(lines)

    def _show_status(self) -> None:
        f = self.filters
        parts = [f"sort {self.sort}"]
        for name, value in (
            ("state", f.status),
            ("agent", f.agent),
            ("tenant", f.tenant),
            ("class", f.token_class),
            ("search", f.search),
        ):
            if value is not None:
                parts.append(f"{name}={value}")
        if self.worker_focus is not None:
            parts.append(f"worker={self.worker_focus.stem}")
        total = sum(
            len(snapshot.sessions) if snapshot.selection is None else snapshot.selection.total
            for _, snapshot in self._live()
        )
        shown = self.query_one("#sessions", SessionTable).row_count
        parts.append(f"{shown} of {total} sessions")
        if self.paused:
            parts.append("PAUSED (p resumes)")
        self.query_one("#status", Static).update("  ".join(parts))

    def _live(self) -> list[tuple[WorkerView, Snapshot]]:
        """The workers answering now, with their snapshots."""
        fetch = self.fetch
        if fetch is None:
            return []
        return [(v, v.snapshot) for v in fetch.workers if v.snapshot is not None and not v.gone]

    def _update_table(self, plan: TablePlan, views: dict[Path, WorkerView]) -> None:
        table = self.query_one("#sessions", SessionTable)
        table.show_column(0, len({path for path, _ in plan.rows.values()}) > 1)
        table.show_column(2, any(row.pid is not None for _, row in plan.rows.values()))
        llm = any(has_usage(row) for _, row in plan.rows.values())
        for index in USAGE_INDEXES:
            table.show_column(index, llm)
        table.show_column(CLASS_INDEX, any(row.token_class is not None for _, row in plan.rows.values()))
        table.show_column(KV_INDEX, any(row.kv_bytes is not None for _, row in plan.rows.values()))
        table.set_rows(plan.order, plan.cells)
        self._where = {key: (views[path], row) for key, (path, row) in plan.rows.items()}

    def selected(self) -> tuple[WorkerView, SessionRow] | None:
        """The worker and session under the cursor, if any."""
        table = self.query_one("#sessions", SessionTable)
        key = table.cursor_key
        return self._where.get(key) if table.display and key is not None else None

    def _reapply(self) -> None:
        """Show what is at hand in the new order at once, and ask the workers for the rows it selects."""
        if self.fetch is not None:
            self.apply(self.fetch)
        self._tick()

    # -- actions ----------------------------------------------------------------------------------

    def action_help(self) -> None:
        live = self._live()
        slow_for = live[0][1].worker.introspection.slow_for_s if live else 5.0
        self.push_screen(HelpScreen(help_text(self.refresh_s, slow_for)))

    def action_sort(self, key: str) -> None:
        self.sort = key
        self._reapply()

    def action_cycle_sort(self) -> None:
        self.action_sort(SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)])

    def action_cycle_filter(self, field: str) -> None:
        """Step the filter on `field` through the values present now, then back to all."""
        attribute = "state" if field == "status" else field
        present: set[str | None] = set()
        for _, snapshot in self._live():
            if snapshot.selection is not None:  # the worker sent some rows, and every value there is
                present.update(snapshot.selection.facets.get(field, ()))
            else:
                present.update(getattr(r, attribute) for r in snapshot.sessions)
        if field == "status":  # in life-cycle order
            choices = [s for s in STATES if s in present]
        else:
            choices = sorted(x for x in present if x is not None)
        current = getattr(self.filters, field)
        following = choices[choices.index(current) + 1 :] if current in choices else choices
        self.filters = replace(self.filters, **{field: following[0] if following else None})
        self._reapply()

    def action_cycle_worker(self) -> None:
        paths = [v.socket_path for v, _ in self._live()]
        if self.worker_focus in paths:
            i = paths.index(self.worker_focus)
            self.worker_focus = paths[i + 1] if i + 1 < len(paths) else None
        else:
            self.worker_focus = paths[0] if len(paths) > 1 else None
        self._reapply()

    def action_clear_filters(self) -> None:
        self.filters = Filters()
        self.worker_focus = None
        search = self.query_one("#search", Input)
        search.value = ""
        search.display = False
        self._reapply()

    def action_search(self) -> None:
        if len(self.screen_stack) > 1:  # the detail, help or confirmation screen is up
            return
        search = self.query_one("#search", Input)
        if search.has_focus:  # a `/` typed in the search box (paths have them)
            search.insert_text_at_cursor("/")
            return
        search.display = True
        self.screen.set_focus(search)  # now, not at the next idle as `focus()` would

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filters = replace(self.filters, search=event.value or None)
        self._reapply()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not event.value:
            event.input.display = False
        self.query_one("#sessions", SessionTable).focus()

    def on_key(self, event: object) -> None:
        search = self.query_one("#search", Input)
        if getattr(event, "key", None) == "escape" and search.has_focus:
            search.value = ""
            search.display = False
            self.query_one("#sessions", SessionTable).focus()

    def on_session_table_selected(self, event: SessionTable.Selected) -> None:
        self.action_open_session()

    def action_open_session(self) -> None:
        found = self.selected()
        if found is None or found[0].snapshot is None:
            return
        view, row = found
        key = f"{view.socket_path}|{row.session_id}"
        text = detail_text(view, row, found[0].snapshot, self.last_profiles.get(key, NO_PROFILE))
        self.push_screen(SessionScreen(key, text))

    def action_cancel_session(self) -> None:
        screen = self.screen
        found = self._where.get(screen.key) if isinstance(screen, SessionScreen) else self.selected()
        if found is None:
            self.notify("no session selected", severity="warning")
            return
        view, row = found
        if row.state not in ("starting", "running", "draining"):
            self.notify(f"session {row.session_id} already {row.state}", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._cancel(view.socket_path, row.session_id), group="cancel")

        who = f"[b]{escape(row.session_id)}[/b] ({escape(row.agent)}) on worker {worker_label(view)}"
        self.push_screen(ConfirmScreen(f"Cancel session {who}?"), answered)

    def action_profile(self) -> None:
        """Record a 5 s CPU profile of the session under the cursor (the whole worker when it has
        ended, or when no session is selected) and say where the flamegraph went."""
        screen = self.screen
        found = self._where.get(screen.key) if isinstance(screen, SessionScreen) else self.selected()
        if found is not None:
            view, row = found
            session_id = row.session_id if row.state in ("starting", "running", "draining") else None
        else:
            workers = self.fetch.workers if self.fetch else ()
            live = [v for v in workers if v.snapshot is not None and not v.gone]
            if self.worker_focus is not None:
                live = [v for v in live if v.socket_path == self.worker_focus]
            if len(live) != 1:
                self.notify("select a session (or a worker with w) to profile", severity="warning")
                return
            view, session_id = live[0], None
        what = f"session {session_id}" if session_id else f"worker {worker_label(view)}"
        self.notify(f"recording {PROFILE_SECONDS:g} s of {what}...")
        self.run_worker(self._profile(view.socket_path, session_id, what), group="profile", exclusive=True)

    async def _profile(self, socket_path: Path, session_id: str | None, what: str) -> None:
        try:
            path = await asyncio.to_thread(self.source.profile, socket_path, session_id, PROFILE_SECONDS)
        except OpenRTCError as exc:
            self.notify(f"could not profile {what}: {exc}", severity="error")
            return
        stamp = f"{path} ({time.strftime('%H:%M:%S')})"
        self.last_profiles[f"{socket_path}|{session_id}" if session_id else str(socket_path)] = stamp
        self.notify(f"profile of {what}: {path}", timeout=15)
        screen = self.screen
        if isinstance(screen, SessionScreen) and self.fetch is not None:
            await self.refresh_now()

    async def _cancel(self, socket_path: Path, session_id: str) -> None:
        try:
            await asyncio.to_thread(self.source.cancel, socket_path, session_id)
        except OpenRTCError as exc:
            self.notify(f"could not cancel {session_id}: {exc}", severity="error")
            return
        self.notify(f"cancelled {session_id}")
        await self.refresh_now()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._show_status()


def make_app(
    source: Source, refresh_s: float = 1.0, sort: str = "cpu", filters: Filters | None = None
) -> TopApp:
    """The live view over `source`, refreshed every `refresh_s` seconds."""
    if refresh_s <= 0:
        raise ConfigError(f"refresh_s must be positive, got {refresh_s!r}")
    if sort not in SORT_KEYS:
        raise ConfigError(f"sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    return TopApp(source, refresh_s, sort, filters or Filters())
