"""The snapshot schema (version 1): what `snapshot` returns and `top --json` prints.

Frozen dataclasses, one docstring per field, converted to and from plain dicts only here. README's
"snapshot reference" is generated from these docstrings (`python -m openrtc.cli.reference --write`).

Versioning: adding a field keeps the version. A new field has a default here, so this code reads a
snapshot from an older worker that lacks it, and clients ignore fields they do not know, so an older
client reads a newer worker. Removing or renaming a field, or changing what one means, makes a new
version; a client that meets a version it does not read stops with an error naming both.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from openrtc.errors import ERROR_MAX_CHARS, ProtocolError, SchemaVersionError

__all__ = ["ERROR_MAX_CHARS", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LoopLag:
    """How late the loop's heartbeat timer fired, over the last `window_s`, in milliseconds."""

    p50: float
    """Median lateness."""
    p99: float
    """99th percentile lateness."""
    max: float
    """Worst lateness."""


@dataclass(frozen=True)
class UsageInfo:
    """What a session (or the whole worker) recorded of its LLM calls and tools."""

    calls: int
    """LLM calls recorded."""
    input_tokens: int
    """Input tokens, cache reads and writes included (calls with unknown counts left out)."""
    output_tokens: int
    """Output tokens, reasoning included."""
    cache_read_tokens: int
    """Input tokens read from the provider's prompt cache."""
    cache_write_tokens: int
    """Input tokens written to the provider's prompt cache."""
    reasoning_tokens: int
    """Output tokens spent on reasoning."""
    cost_usd: float | None
    """The sum of the known costs, US dollars; null when no call's cost is known (never 0 for unknown)."""
    unknown_cost_calls: int
    """Calls whose cost is unknown, left out of `cost_usd`."""
    tools_ok: int
    """Tool calls that returned."""
    tools_failed: int
    """Tool calls that raised."""
    models: dict[str, dict[str, Any]]
    """Per model (`provider/model`): calls, the token counts, cost_usd, unknown_cost_calls, llm_s."""


@dataclass(frozen=True)
class SocketInfo:
    """The worker's socket server: its clients, and the ones it had to drop to stay within bounds."""

    connections_open: int
    """Connections open now."""
    connections_total: int
    """Connections accepted since start."""
    requests: int
    """Requests answered since start."""
    buffered_bytes: int
    """Reply bytes waiting to be sent now, all clients together (bounded by a few MB)."""
    dropped_unread: int
    """Clients dropped because they did not read their replies."""
    dropped_slow: int
    """Clients dropped because a request did not arrive whole in time."""
    evicted: int
    """Idle clients closed to make room for a new one when every connection slot was taken."""


@dataclass(frozen=True)
class IntrospectionInfo:
    """What the introspection itself did and cost."""

    enabled: bool
    """False when the worker runs with introspection off (then this snapshot is all there is)."""
    window_s: float
    """Span of the rolling windows (`cpu_pct`, `loop_lag_ms`), in seconds."""
    sample_hz_target: float
    """How often the watchdog looks at the loop at least: once per slow-session threshold (it also
    looks when the running step would cross the threshold)."""
    sample_hz_achieved: float
    """How often it did, over the window (lower than the target means the watchdog was starved)."""
    errors: int
    """Errors of the introspection itself (bad frames, failed ticks...) since start."""
    last_error: str | None
    """The most recent such error, in words."""
    cost_pct: float
    """CPU the introspection threads used, as % of one core over the window (the per-step timing on
    the loop thread is not included: it is measured by the overhead benchmark)."""
    socket: SocketInfo | None = None
    """The socket server's own figures."""
    slow_for_s: float = 5.0
    """How long a session stays `slow` after a block."""
    blocks_kept: int = 100
    """How many blocks the worker keeps (the snapshot's `blocks`)."""


@dataclass(frozen=True)
class WorkerInfo:
    """The worker process."""

    worker_id: str
    """Random id, stable for the worker's life."""
    pid: int
    """Process id."""
    hostname: str
    """Host name."""
    started_at: float
    """Unix time the worker started."""
    uptime_s: float
    """Seconds since then."""
    isolation: str
    """`coroutine` or `process`."""
    loop: str
    """`uvloop` or `asyncio`."""
    python: str
    """Python version."""
    rss_mb: float
    """Resident set size of the worker process, MB (read at most once a second)."""
    cpu_pct: float
    """CPU of the whole process over the window, % of one core."""
    loop_lag_ms: LoopLag
    """Event loop lateness."""
    sessions_active: int
    """Sessions not finished."""
    sessions_started: int
    """Sessions started since the worker started."""
    sessions_failed: int
    """Sessions that failed since the worker started."""
    max_sessions: int | None
    """The worker's session cap, or None."""
    draining: bool
    """True once a drain started: no new sessions."""
    memory_limit_mb: float | None
    """RSS above which new sessions are refused, or None."""
    introspection: IntrospectionInfo
    """The introspection's own figures."""
    sessions_refused: dict[str, int] = field(default_factory=dict)
    """Sessions refused since the worker started, by reason (`max_sessions`, `memory_limit`,
    `draining`...)."""
    usage: UsageInfo | None = None
    """What all its sessions recorded since the worker started; None until one records a call or a tool."""
    classes: dict[str, int] | None = None
    """Its live sessions by token class, each once; None when none has a class (no capacity hook, or
    no live session)."""
    kv_bytes: int | None = None
    """Its live sessions' KV-cache estimates, summed; None when none has one (no model architecture)."""


@dataclass(frozen=True)
class LastBlock:
    """The most recent block of one session."""

    ms: float
    """How long the session held the loop in that step."""
    at: float
    """Unix time the block started."""
    where: str
    """`path:line in function` of the session's own frame that blocked."""
    ongoing: bool = False
    """True while that block is still going on (then `ms` is its duration so far)."""


@dataclass(frozen=True)
class SessionRow:
    """One session."""

    session_id: str
    """Session id."""
    agent: str
    """Agent name."""
    tenant: str | None
    """Tenant, or None."""
    state: str
    """`starting | running | draining | ended | failed | cancelled`."""
    reason: str | None
    """Why it failed or was cancelled, else None."""
    pid: int | None
    """The child's pid in process isolation, None in coroutine mode."""
    started_at: float
    """Unix time it started."""
    duration_s: float
    """Seconds since it started (or until it ended)."""
    cpu_pct: float
    """Share of one core during which its code held the loop thread over the window, %."""
    cpu_s: float
    """Seconds its code held the loop thread since it started."""
    mem_mb: float
    """Coroutine mode: worker RSS / active sessions (an equal share, not a measurement of this
    session); process mode: the child's RSS."""
    peak_mb: float
    """Largest `mem_mb` seen during its life."""
    tasks: int
    """Its tasks still alive."""
    slow: bool
    """True for a few seconds after it blocked the loop."""
    blocks: int
    """How many times it blocked the loop past the threshold."""
    last_block: LastBlock | None
    """Its latest block, or None."""
    error: str | None = None
    """Why it failed, in one line: the exception's type and message (`RuntimeError: boom`), or what
    happened to its process; cut to `ERROR_MAX_CHARS`. None unless it failed."""
    usage: UsageInfo | None = None
    """What it recorded of its LLM calls and tools; None until it records one."""
    token_class: str | None = None
    """Its class by cumulative tokens (`light`, `medium`, `heavy`, `extreme` by default); None without
    the capacity hook."""
    kv_bytes: int | None = None
    """Its KV-cache estimate now: its current context (the last call's input plus output tokens) x the
    model's KV bytes per token; 0 once it ended; None without a model architecture (`--model-arch`)."""


@dataclass(frozen=True)
class Block:
    """One time the loop did not turn for longer than the threshold."""

    session_id: str | None
    """The session whose code held the loop; None for overload or code outside any session."""
    agent: str | None
    """Its agent, or None."""
    ms: float
    """How long the loop was held (so far, when ongoing)."""
    at: float
    """Unix time it started."""
    where: str
    """`path:line in function` of the session's own frame; for overload, what happened instead."""
    stack: list[str]
    """The frames, innermost last (`path:line in function`); empty when not captured."""
    ongoing: bool
    """True while the loop is still held."""
    kind: str
    """`session` (one session's step), `overload` (many short steps, no single culprit), `outside`
    (code outside any session, or the loop thread paused) or `gc` (a garbage collection)."""


@dataclass(frozen=True)
class SelectionInfo:
    """What a snapshot holds when its request asked for a selection (`limit`, `sort`, `filters`)."""

    sort: str
    """The order of `sessions`."""
    limit: int
    """At most this many rows were sent."""
    matched: int
    """Sessions (active and recently ended) that pass the filters: `sessions` is the first `limit`."""
    total: int
    """Sessions (active and recently ended) the worker has, filtered or not."""
    filters: dict[str, str] = field(default_factory=dict)
    """The filters applied (`agent`, `tenant`, `status`, `token_class`, `search`), those set only."""
    facets: dict[str, list[str]] = field(default_factory=dict)
    """Every value present, unfiltered, of `agent`, `tenant`, `token_class` and `status` (at most the
    first 50 of each, sorted)."""


@dataclass(frozen=True)
class Snapshot:
    """The worker's introspection state at one instant."""

    schema_version: int
    """Always `SCHEMA_VERSION` for this code."""
    at: float
    """Unix time the snapshot was taken."""
    worker: WorkerInfo
    """The worker."""
    sessions: list[SessionRow]
    """Active sessions, then recently ended ones (kept `ENDED_KEEP_S`, 10 s)."""
    blocks: list[Block]
    """The last blocks, oldest first; an ongoing one last."""
    selection: SelectionInfo | None = None
    """None when `sessions` holds every session; else which of them it holds."""


ENDED_KEEP_S = 10.0
"""How long a finished session stays in snapshots."""

T = TypeVar("T")


def to_dict(snapshot: Snapshot) -> dict[str, Any]:
    """Plain dicts and lists, as they cross the socket and as `top --json` prints them.

    Not `dataclasses.asdict`: it deep-copies every value, which made a 1,000-session snapshot cost
    tens of milliseconds of GIL time on the server thread.
    """
    return {
        "schema_version": snapshot.schema_version,
        "at": snapshot.at,
        "worker": plain(snapshot.worker),
        "sessions": [plain(row) for row in snapshot.sessions],
        "blocks": [plain(block) for block in snapshot.blocks],
        "selection": None if snapshot.selection is None else plain(snapshot.selection),
    }


_NESTED = (LoopLag, IntrospectionInfo, LastBlock, SocketInfo, UsageInfo)
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def plain(obj: Any) -> dict[str, Any]:
    """One schema dataclass as a plain dict (nested ones too)."""
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    out = {}
    for name in names:
        value = getattr(obj, name)
        out[name] = plain(value) if isinstance(value, _NESTED) else value
    return out


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ProtocolError(f"snapshot field {where} must be a map, got {type(data).__name__}")
    known = fields(cls)  # type: ignore[arg-type]
    # Fields added later have defaults: an older worker's snapshot lacks them. Unknown keys (a newer
    # worker's additions) are ignored.
    missing = {f.name for f in known if f.default is MISSING and f.default_factory is MISSING} - data.keys()
    if missing:
        raise ProtocolError(f"snapshot field {where} lacks {', '.join(sorted(missing))}")
    return cls(**{f.name: data[f.name] for f in known if f.name in data})


def from_dict(data: Any) -> Snapshot:
    """Parse a snapshot; a different schema version or a malformed one raises a clear error."""
    if not isinstance(data, dict):
        raise ProtocolError(f"snapshot must be a map, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"worker sends snapshot schema version {version!r}; this openrtc reads version {SCHEMA_VERSION}: "
            "upgrade the older side"
        )
    try:
        worker_data = dict(data["worker"])
        worker_data["loop_lag_ms"] = _build(LoopLag, worker_data.get("loop_lag_ms"), "worker.loop_lag_ms")
        info = dict(worker_data.get("introspection") or {})
        if info.get("socket") is not None:
            info["socket"] = _build(SocketInfo, info["socket"], "worker.introspection.socket")
        worker_data["introspection"] = _build(IntrospectionInfo, info, "worker.introspection")
        if worker_data.get("usage") is not None:
            worker_data["usage"] = _build(UsageInfo, worker_data["usage"], "worker.usage")
        worker = _build(WorkerInfo, worker_data, "worker")
        sessions = []
        for i, raw in enumerate(data["sessions"]):
            row = dict(raw)
            if row.get("last_block") is not None:
                row["last_block"] = _build(LastBlock, row["last_block"], f"sessions[{i}].last_block")
            if row.get("usage") is not None:
                row["usage"] = _build(UsageInfo, row["usage"], f"sessions[{i}].usage")
            sessions.append(_build(SessionRow, row, f"sessions[{i}]"))
        blocks = [_build(Block, b, f"blocks[{i}]") for i, b in enumerate(data["blocks"])]
        chosen = data.get("selection")
        selection = None if chosen is None else _build(SelectionInfo, chosen, "selection")
        return Snapshot(SCHEMA_VERSION, float(data["at"]), worker, sessions, blocks, selection)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed snapshot: {type(exc).__name__}: {exc}") from exc
