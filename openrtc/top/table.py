"""The session table of the live view: a Line-API widget that renders only the rows on screen.

Textual's `DataTable` measures every cell of every row it is given (seen: seconds for 10,000
sessions) and re-sorts its whole row map on each change. This table holds the rows as plain cells in
display order and draws a row only when it is on screen, from a cache keyed by the row's cells: a
refresh that changes 50 visible rows out of 10,000 re-draws 50 lines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cell = tuple[str, str]
"""(text, style): style is a Rich style string, "" for the default."""
RowCells = tuple[Any, ...]
"""A row's data as the caller keeps it; `style_row` turns it into one `Cell` per column."""

GAP = 1
"""Blank cells between columns."""


def fit(text: str, width: int, right: bool = False) -> str:
    """`text` cut or padded to exactly `width` cells (an ellipsis marks a cut), numbers to the right."""
    if len(text) > width:
        return text[: max(0, width - 1)] + "…"
    return text.rjust(width) if right else text.ljust(width)


class SessionTable(ScrollView, can_focus=True):
    """Rows in display order, a fixed header, a cursor that stays on its row's key across updates."""

    BINDINGS = [
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "move(-1000000000)", "first", show=False),
        Binding("end", "move(1000000000)", "last", show=False),
        Binding("enter", "select", "details"),
    ]
    COMPONENT_CLASSES = {"session-table--header", "session-table--cursor", "session-table--stripe"}
    DEFAULT_CSS = """
    SessionTable { background: $surface; }
    SessionTable > .session-table--header { text-style: bold; background: $panel; }
    SessionTable > .session-table--cursor { background: $accent 60%; }
    SessionTable > .session-table--stripe { background: $boost; }
    """

    cursor = reactive(0, always_update=True, repaint=False)
    """Index of the highlighted row in `order`."""

    class Selected(Message):
        """Enter (or a click on the highlighted row) on a row."""

        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(
        self,
        columns: Sequence[tuple[str, int, bool]],
        style_row: Callable[[str, RowCells], list[Cell]],
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        """(label, width, right-aligned) of each column: text beyond the width is cut with an ellipsis.
        The last column also takes whatever width the screen has left."""
        self._widths = [w for _, w, _ in self.columns]
        self._right = [right for _, _, right in self.columns]
        self._hidden: set[int] = set()
        self._style_row = style_row
        self.order: list[str] = []
        """Row keys in display order."""
        self._cells: Mapping[str, RowCells] = {}
        self._strips: dict[str, tuple[RowCells, int, Strip]] = {}
        self.lines_drawn = 0
        """Row lines drawn from cells (not from the cache) so far: what tests and benchmarks read."""

    # -- data -------------------------------------------------------------------------------------

    def set_rows(self, order: list[str], cells: Mapping[str, RowCells]) -> None:
        """Show `order` with these cells. A cursor on the first row stays there (the top of the list
        is what is being watched); a cursor the user moved stays on its session, if still there."""
        key = self.cursor_key if self.cursor > 0 else None
        self.order = order
        self._cells = cells
        if len(self._strips) > 2 * len(cells) + 256:  # forget rows that left, now and then
            self._strips = {k: v for k, v in self._strips.items() if k in cells}
        self.virtual_size = Size(self._line_width(), len(order) + 1)
        index = self._index_of(key)
        self.cursor = index if index is not None else min(self.cursor, max(0, len(order) - 1))
        self._keep_cursor_visible()
        self.refresh()

    @property
    def row_count(self) -> int:
        return len(self.order)

    @property
    def cursor_key(self) -> str | None:
        return self.order[self.cursor] if 0 <= self.cursor < len(self.order) else None

    def cells_of(self, index: int) -> RowCells:
        return self._cells[self.order[index]]

    def _index_of(self, key: str | None) -> int | None:
        if key is None:
            return None
        try:
            return self.order.index(key)
        except ValueError:
            return None

    # -- drawing ----------------------------------------------------------------------------------

    def show_column(self, index: int, shown: bool) -> None:
        """Show or hide column `index` (e.g. WORKER when only one worker is listed)."""
        if shown != (index not in self._hidden):
            if shown:
                self._hidden.discard(index)
            else:
                self._hidden.add(index)
            self.on_resize()
            self.refresh()

    def _line_width(self) -> int:
        shown = [w for i, w in enumerate(self._widths) if i not in self._hidden]
        return sum(shown) + GAP * len(shown) + 1

    def on_resize(self) -> None:
        fixed = [w for i, (_, w, _) in enumerate(self.columns[:-1]) if i not in self._hidden]
        rest = self.size.width - 1 - sum(fixed) - GAP * (len(fixed) + 1)
        widths = [*(w for _, w, _ in self.columns[:-1]), max(self.columns[-1][1], rest)]
        if widths != self._widths:  # a change of height alone (the header grew) keeps every drawn row
            self._widths = widths
            self._strips.clear()
        self.virtual_size = Size(self._line_width(), len(self.order) + 1)
        self._keep_cursor_visible()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        if y == 0:
            line = self._header()
        else:
            index = scroll_y + y - 1
            if index >= len(self.order):
                return Strip.blank(width, self.rich_style)
            line = self._row_strip(index)
            if index == self.cursor:
                line = line.apply_style(self.get_component_rich_style("session-table--cursor"))
        return line.crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def _header(self) -> Strip:
        style = self.rich_style + self.get_component_rich_style("session-table--header")
        text = " " + "".join(
            fit(label, w, right) + " " * GAP
            for i, ((label, _, right), w) in enumerate(zip(self.columns, self._widths, strict=True))
            if i not in self._hidden
        )
        return Strip([Segment(text, style)])

    def _row_strip(self, index: int) -> Strip:
        key = self.order[index]
        cells = self._cells[key]
        stripe = index % 2
        cached = self._strips.get(key)
        if cached is not None and cached[1] == stripe and cached[0] == cells:
            return cached[2]
        base = self.rich_style
        if stripe:
            base += self.get_component_rich_style("session-table--stripe")
        segments = [Segment(" ", base)]
        hidden = self._hidden
        styled = self._style_row(key, cells)
        for i, (width, (text, style)) in enumerate(zip(self._widths, styled, strict=True)):
            if i in hidden:
                continue
            cell = fit(text, width, self._right[i])
            segments.append(Segment(cell, base + Style.parse(style) if style else base))
            segments.append(Segment(" " * GAP, base))
        strip = Strip(segments)
        self._strips[key] = (cells, stripe, strip)
        self.lines_drawn += 1
        return strip

    # -- cursor -----------------------------------------------------------------------------------

    def watch_cursor(self, old: int, new: int) -> None:
        if old != new:
            self.refresh()

    def _keep_cursor_visible(self) -> None:
        rows_on_screen = max(1, self.size.height - 1)
        top = round(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + rows_on_screen:
            self.scroll_to(y=self.cursor - rows_on_screen + 1, animate=False)

    def action_move(self, delta: int) -> None:
        if self.order:
            self.cursor = max(0, min(len(self.order) - 1, self.cursor + delta))
            self._keep_cursor_visible()

    def action_page(self, direction: int) -> None:
        self.action_move(direction * max(1, self.size.height - 2))

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.Selected(key))

    def on_click(self, event: Click) -> None:
        if event.y == 0:
            return
        index = round(self.scroll_y) + event.y - 1
        if 0 <= index < len(self.order):
            if index == self.cursor:
                self.action_select()
            self.cursor = index
