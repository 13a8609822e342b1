"""What the live view draws, as pure functions over snapshots: the table's columns and row styles, the
pinned stall, the help, one session's details (Rich text; no widget, no I/O)."""

from __future__ import annotations

from rich.text import Text

from openrtc.introspection.schema import Block, SessionRow, Snapshot
from openrtc.top.source import WorkerView
from openrtc.top.table import Cell, RowCells
from openrtc.top.view import USAGE_COLUMNS, PlannedRow, detail_lines

COLUMNS: tuple[tuple[str, int, bool], ...] = (
    # (label, width, right-aligned)
    ("WORKER", 7, False),
    ("SESSION", 8, False),
    ("PID", 7, True),
    ("AGENT", 14, False),
    ("TENANT", 8, False),
    ("STATE", 9, False),
    ("AGE", 6, True),
    ("CPU%", 5, True),
    ("", 10, False),
    ("MEM", 6, True),
    ("BLOCKS", 6, True),
    ("IN", 6, True),
    ("OUT", 6, True),
    ("CACHE%", 6, True),
    ("COST", 10, True),
    ("CLASS", 7, False),
    ("KV", 7, True),
    ("LAST BLOCK / ERROR", 30, False),
)
USAGE_INDEXES = tuple(i for i, (label, _, _) in enumerate(COLUMNS) if label in USAGE_COLUMNS)
CLASS_INDEX = next(i for i, (label, _, _) in enumerate(COLUMNS) if label == "CLASS")
KV_INDEX = CLASS_INDEX + 1
"""IN, OUT, CACHE% and COST: shown while some session in the table has made an LLM call."""
HELP = """\
[b]openrtc top[/b]: every session of every local worker, refreshed every {refresh:g}s.

[b]Sort[/b]     s cycle   c CPU   m memory   o age   b blocks   $ cost   n agent
[b]Filter[/b]   / search   f state   a agent   t tenant   l class   w worker   x clear all
[b]Session[/b]  enter details (every field, recent blocks with stacks)   k cancel (asks first)
         r record a {profile_s:g} s CPU profile of it (of the worker when none is selected)
[b]View[/b]     p pause/resume   ? this help   esc back   q quit

Slow sessions (blocked the loop in the last {slow_for:g} s) are red and listed first. \
A stall in progress is pinned above the table with its live duration and the line it is stuck on. \
A failed session shows its error in the last column. \
IN, OUT, CACHE% and COST are the session's LLM calls so far: COST ends in ? when some had no known \
price, and is blank while none has one.
"""


def help_text(refresh_s: float, slow_for_s: float = 5.0) -> str:
    """The help overlay (Rich markup)."""
    return HELP.format(refresh=refresh_s, slow_for=slow_for_s, profile_s=5)


def worker_label(view: WorkerView) -> str:
    return str(view.snapshot.worker.pid) if view.snapshot is not None else view.socket_path.stem


def style_row(key: str, cells: RowCells) -> list[Cell]:
    """A `PlannedRow` as drawn: the CPU bar in colour, slow rows in red, failed ones yellow."""
    row = PlannedRow(*cells)
    cpu = row.cpu_pct
    bar = (
        row.bar.replace("#", "█").replace(".", "·"),
        "red" if cpu >= 50 else "yellow" if cpu >= 20 else "green",
    )
    state, last = (row.state, ""), (row.last, "")
    if row.slow:
        state, last = (row.state, "bold red"), (row.last, "red")
    elif row.state_value in ("failed", "cancelled"):
        state = (row.state, "yellow")
        if row.state_value == "failed":
            last = (row.last, "yellow")
    elif row.state_value == "ended":
        state = (row.state, "dim")
    plain: list[Cell] = [(text, "") for text in (row.worker, row.session, row.pid, row.agent, row.tenant)]
    numbers = (
        row.mem,
        row.blocks,
        row.tokens_in,
        row.tokens_out,
        row.cache,
        row.cost,
        row.token_class,
        row.kv,
    )
    return [*plain, state, (row.age, ""), (row.cpu, ""), bar, *((text, "") for text in numbers), last]


def stall_text(view: WorkerView, stall: Block) -> Text:
    who = f"session {stall.session_id} ({stall.agent})" if stall.session_id else "no session"
    text = Text(f" STALL NOW {stall.ms:,.0f} ms ", style="bold white on red")
    text.append(f" worker {worker_label(view)}: {who} is stuck at ", style="bold red")
    text.append(stall.where, style="bold")
    return text


def detail_text(
    view: WorkerView, row: SessionRow, snapshot: Snapshot, last_profile: str | None = None
) -> Text:
    """Every field of one session, then its recent blocks with full stacks, newest first.
    `last_profile`: the flamegraph last recorded of it from `top` (`r`)."""
    text = Text()
    for line, style in detail_lines(row, snapshot, view.socket_path, last_profile):
        if style == "field":
            name, _, value = line.partition("\0")
            text.append(name, style="dim")
            text.append(f"{value}\n")
        else:
            text.append(line + "\n", style=style)
    return text
