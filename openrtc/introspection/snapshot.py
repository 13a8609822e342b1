"""Building a snapshot from the pool's view and the monitor. The arithmetic is pure; reading is
thread-safe.

Runs on the server thread: it reads only values the loop thread publishes whole (ints, floats,
tuples, objects replaced rather than mutated) and copies containers with one C-level call.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from openrtc.introspection import timing
from openrtc.introspection.monitor import MAX_BLOCKS, SLOW_FOR_S, Monitor
from openrtc.introspection.schema import (
    SCHEMA_VERSION,
    Block,
    IntrospectionInfo,
    LoopLag,
    SocketInfo,
    WorkerInfo,
    plain,
)
from openrtc.introspection.selection import STATES, Filters, Selection, passes
from openrtc.introspection.server import ServerStats
from openrtc.introspection.tagging import live_tasks
from openrtc.runtime.session import Session, SessionState
from openrtc.runtime.view import PoolView
from openrtc.usage.totals import Totals

ENDED_STATES = ("ended", "failed", "cancelled")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    # The smallest value with at least q% of the values at or below it (round() rounded half to even:
    # p99 of 100 values read the 100th).
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def share_pct(busy_s: float, span_s: float) -> float:
    """Busy seconds over a span, as % of one core, clamped to [0, 100]."""
    return max(0.0, min(100.0, busy_s / span_s * 100)) if span_s > 0 else 0.0


def capacity_totals(sessions: Sequence[Session]) -> dict[str, Any]:
    """The worker's mix (live sessions by class, each once) and KV estimate, from its live sessions
    (as their rows' `token_class` and `kv_bytes` add up)."""
    classes: dict[str, int] = {}
    kv: list[int] = []
    for session in sessions:
        capacity = session.capacity
        if capacity is None:
            continue
        if capacity.token_class is not None:
            classes[capacity.token_class] = classes.get(capacity.token_class, 0) + 1
        if capacity.kv_bytes is not None:
            kv.append(round(capacity.kv_bytes))
    if not classes:
        return {"classes": None, "kv_bytes": None}
    return {"classes": classes, "kv_bytes": sum(kv) if kv else None}


def usage_info(totals: Totals | None) -> dict[str, Any] | None:
    """A `UsageInfo` in its wire form; None until something was recorded (most sessions of a big
    worker, each snapshot: they cost nothing here)."""
    if totals is None or not (totals.models or totals.tools):
        return None
    # Copies first (one C call each): the loop may add a model or a tool while this thread reads.
    tools, models = list(totals.tools.values()), list(totals.models.items())
    tools_ok = sum(t.ok for t in tools)
    return {
        "calls": totals.calls,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_read_tokens": totals.cache_read_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "reasoning_tokens": totals.reasoning_tokens,
        "cost_usd": totals.cost_usd,
        "unknown_cost_calls": totals.unknown_cost_calls,
        "tools_ok": tools_ok,
        "tools_failed": sum(t.failed for t in tools),
        "models": {key: m.as_dict() for key, m in models},
    }


def build_snapshot(
    view: PoolView,
    monitor: Monitor,
    ended: list[Session],
    server: ServerStats | None = None,
    worker_usage: Totals | None = None,
    want: Selection | None = None,
) -> dict[str, Any]:
    """The snapshot in its wire form (what `schema.to_dict` would give for the `Snapshot` it describes):
    the active sessions, then `ended` (those finished recently); with `want`, only the first
    `want.limit` of those that pass its filters, in its order, and how many passed.

    Session rows are built as dicts directly: this runs on every `snapshot` request, holding the GIL,
    and a dataclass per row doubled its cost. `tests/introspection` checks the keys against `SessionRow`.
    """
    now_wall = time.time()
    now = time.perf_counter()
    oldest, span = monitor.window()
    sessions = view.sessions()
    windows = monitor.windows
    rss = windows.rss_mb
    share = rss / len(sessions) if sessions else 0.0
    ongoing = monitor.ongoing()
    everyone = [*sessions, *ended]  # the first len(sessions) are active
    live = len(sessions)
    chosen: dict[str, Any] | None = None
    picked: Sequence[int] = range(len(everyone))
    if want is not None:
        picked, matched, facets, capacity = _select(
            everyone, live, want, monitor, oldest, span, now, share, ongoing
        )
        chosen = {**want.to_wire(), "matched": matched, "total": len(everyone), "facets": facets}
    else:
        capacity = capacity_totals(sessions)
    rows = [_row(everyone[i], monitor, oldest, span, now, share, i < live) for i in picked]
    _add_step_in_progress(rows, monitor, span, ongoing)

    lags = sorted(lag for at, lag in list(monitor.heartbeat.lags_ms) if now - at <= span)
    polls = [t for t in list(monitor.watchdog.polls) if now - t <= span]
    cpu_now = os.times()
    cpu_pct = (cpu_now.user + cpu_now.system - windows.tick_cpu[oldest]) / span * 100
    latest = windows.tick_index
    self_cpu = windows.tick_self_cpu[latest] - windows.tick_self_cpu[oldest]
    tick_span = max(1e-9, windows.tick_times[latest] - windows.tick_times[oldest])
    facts = view.facts()
    worker = WorkerInfo(
        worker_id=facts.worker_id,
        pid=facts.pid,
        hostname=facts.hostname,
        started_at=facts.started_at,
        uptime_s=round(now_wall - facts.started_at, 3),
        isolation=facts.isolation,
        loop=facts.loop,
        python=facts.python,
        rss_mb=round(rss, 1),
        cpu_pct=round(max(0.0, cpu_pct), 1),
        loop_lag_ms=LoopLag(
            round(percentile(lags, 50), 2),
            round(percentile(lags, 99), 2),
            round(lags[-1] if lags else 0.0, 2),
        ),
        sessions_active=len(sessions),
        sessions_started=facts.sessions_started,
        sessions_failed=facts.sessions_failed,
        max_sessions=facts.max_sessions,
        draining=facts.draining,
        memory_limit_mb=facts.memory_limit_mb,
        introspection=IntrospectionInfo(
            enabled=True,
            window_s=round(span, 3),
            sample_hz_target=round(monitor.sample_hz_target, 1),
            sample_hz_achieved=round(len(polls) / span, 1),
            errors=monitor.errors + (server.errors if server else 0),
            last_error=monitor.last_error or (server.last_error if server else None),
            cost_pct=round(self_cpu / tick_span * 100, 2),
            socket=_socket_info(server),
            slow_for_s=SLOW_FOR_S,
            blocks_kept=MAX_BLOCKS,
        ),
        sessions_refused=facts.sessions_refused,
    )
    worker_plain = plain(worker)
    worker_plain["usage"] = usage_info(worker_usage)
    worker_plain.update(capacity)
    blocks = list(monitor.blocks)
    if ongoing is not None:
        blocks.append(ongoing)
    return {
        "schema_version": SCHEMA_VERSION,
        "at": now_wall,
        "worker": worker_plain,
        "sessions": rows,
        "blocks": [plain(b) for b in blocks],
        "selection": chosen,
    }


def _select(
    everyone: list[Session],
    live: int,
    want: Selection,
    monitor: Monitor,
    oldest: int,
    span: float,
    now: float,
    share: float,
    ongoing: Block | None,
) -> tuple[list[int], int, dict[str, list[str]], dict[str, Any]]:
    """The indexes of the first `want.limit` sessions that pass `want.filters`, in `want.sort` order
    (`selection.order_key`'s); how many passed; the facets (every agent, tenant, token class and
    state present, unfiltered, the first `MAX_FACETS` of each: the live view steps its filters
    through these, whatever rows it was sent); and the live sessions' `capacity_totals`. The first
    `live` sessions are active.

    One pass, each session read once, a sort key and no row: at 10,000 sessions the reads are most of
    the cost (a session's object is rarely in the CPU's cache), and a pass per figure cost as much
    again. The keys are floats (strings for `agent`), never tuples: 10,000 tuples a refresh are
    10,000 objects for the garbage collector, whose full collections of a big worker's heap held its
    loop for 50-70 ms at a time. A float key is the order key's flags (slow first, live before
    finished) as a large offset, plus minus the sort's figure (CPU as its share unrounded).

    The live view's usual request (by CPU, no filter) runs the same pass in C (`_steps.scan`) when
    the C step timer is in use: about 0.15 us a session against 0.5 in this loop."""
    filters = want.filters
    filtering = filters != _NO_FILTERS
    sort = want.sort
    by_cpu = sort == "cpu"
    clock = monitor.clock
    step = clock.current
    running_id = step.stats.session.id if step is not None else None
    held = max(0.0, perf_counter() - clock.started) if step is not None else 0.0
    stalled_id = ongoing.session_id if ongoing is not None else None
    to_pct = 100.0 / span if span > 0 else 0.0
    slow_since = now - SLOW_FOR_S
    agents: set[str] = set()
    tenants: set[str] = set()
    classes: set[str | None] = set()
    states: set[SessionState] = set()
    last_state: SessionState | None = None
    last_agent: str | None = None
    last_tenant: str | None = None
    live_classes: dict[str, int] = {}
    kv: list[float] = []
    indexes: list[int] = []
    keys: list[Any] = []
    total = len(everyone)
    in_c = timing.NATIVE_PASSES
    native = by_cpu and not filtering and in_c is not None and monitor.timer is timing.NATIVE
    params = (live, oldest, to_pct, running_id, held, stalled_id, slow_since, span, now, _FLAG, _FINISHED)
    out = (keys, agents, tenants, states, classes, live_classes, kv)
    for first in range(0, total, LEND_EVERY):
        if first:
            # A pause without the GIL: a loop that woke meanwhile takes it now, not at the end of the
            # interpreter's 5 ms switch interval (what a 10,000-session build cost each loop wake-up).
            time.sleep(LEND_S)
        if native:  # the same pass in C (`_steps.scan`), for the live view's usual request
            in_c.scan(everyone, first, first + LEND_EVERY, params, out)
            continue
        for index in range(first, min(total, first + LEND_EVERY)):
            session = everyone[index]
            active = index < live
            agent, tenant, state, capacity = session.agent, session.tenant, session.state, session.capacity
            # Runs of the same value are the common case: an identity test is cheaper than a set's
            # add, and an enum member's hash is a Python call.
            if agent is not last_agent:
                agents.add(agent)
                last_agent = agent
            if tenant is not last_tenant and tenant is not None:
                tenants.add(tenant)
                last_tenant = tenant
            if state is not last_state:
                states.add(state)
                last_state = state
            token_class = None
            if capacity is not None:
                token_class = capacity.token_class
                classes.add(token_class)
                if active:
                    if token_class is not None:
                        live_classes[token_class] = live_classes.get(token_class, 0) + 1
                    if capacity.kv_bytes is not None:
                        kv.append(capacity.kv_bytes)
            stats = session.stats
            watched = stats is not None and session.process is None
            if filtering:
                last = stats.last_block if watched else None
                searched = (
                    session.id,
                    agent,
                    tenant or "",
                    last.where if last is not None else "",
                    session.error_text or "",
                )
                if not passes(filters, agent, tenant, state, token_class, searched):
                    continue
                indexes.append(index)
            slow = (watched and stats.blocks > 0 and stats.last_block_mono >= slow_since) or (
                stalled_id is not None and session.id == stalled_id
            )
            # by identity: an enum member's hash and `.value` are Python calls
            finished = state is _FINISHED[0] or state is _FINISHED[1] or state is _FINISHED[2]
            flags = (0 if slow else 2) + (1 if finished else 0)
            if by_cpu and watched and active:
                busy = stats.busy_since(oldest)
                if running_id is not None and session.id == running_id:
                    busy += held
                keys.append(flags * _FLAG - busy * to_pct)
            elif sort == "agent":
                keys.append(f"{flags}{agent}\x00{session.id}")
            else:
                value = _sort_value(session, sort, active, oldest, span, now, share)
                keys.append(flags * _FLAG + (1.0 if value is None else -value))
    # Stable: among equal keys (10,000 idle sessions at 0% CPU), the sessions started first.
    if native:
        chosen = in_c.smallest(keys, want.limit)
    else:
        chosen = heapq.nsmallest(want.limit, range(len(keys)), key=keys.__getitem__)
    picked = [indexes[i] for i in chosen] if filtering else chosen
    facets = {
        "agent": sorted(agents)[:MAX_FACETS],
        "tenant": sorted(tenants)[:MAX_FACETS],
        "token_class": sorted(c for c in classes if c is not None)[:MAX_FACETS],
        "status": [name for name in STATES if name in states],
    }
    capacity_sums = (
        {"classes": live_classes, "kv_bytes": sum(round(v) for v in kv) if kv else None}
        if live_classes
        else {"classes": None, "kv_bytes": None}
    )
    return picked, len(keys), facets, capacity_sums


_FLAG = 1e12
"""A float key's step per order-key flag: more than any figure a session's row shows."""
LEND_EVERY = 2048
"""Sessions keyed between two pauses (about a millisecond of work)."""
LEND_S = 0.00005
"""The pause: long enough for a waiting thread to take the GIL."""


_NO_FILTERS = Filters()
_FINISHED = (SessionState.ENDED, SessionState.FAILED, SessionState.CANCELLED)
MAX_FACETS = 50
"""Values per field in a selection's facets: a worker may have a tenant per session."""


def _sort_value(
    session: Session,
    sort: str,
    active: bool,
    oldest: int,
    span: float,
    now: float,
    share: float,
) -> float | None:
    """The figure `sort` orders by, as the session's row would show it (`_row`)."""
    child = session.process
    stats = session.stats
    if sort == "cpu":
        if not active:
            return 0.0
        if child is not None:
            return float(child.cpu_pct(span, now))
        return round(share_pct(stats.busy_since(oldest) if stats is not None else 0.0, span), 2)
    if sort == "mem":
        if not active:
            return 0.0
        return round(float(child.rss_mb) if child is not None else share, 2)
    if sort == "age":
        return round((now if active else session.ended_at or now) - session.started_mono, 3)
    if sort == "blocks":
        return float(stats.blocks) if stats is not None and child is None else 0.0
    if sort == "cost":
        totals = getattr(session.usage, "totals", None)
        return 0.0 if totals is None else totals.cost_usd
    return None


def _socket_info(server: ServerStats | None) -> SocketInfo | None:
    if server is None:
        return None
    return SocketInfo(
        connections_open=server.open,
        connections_total=server.connections,
        requests=server.requests,
        buffered_bytes=server.buffered_bytes,
        dropped_unread=server.dropped_unread,
        dropped_slow=server.dropped_slow,
        evicted=server.evicted,
    )


def _add_step_in_progress(
    rows: list[dict[str, Any]], monitor: Monitor, span: float, ongoing: Block | None
) -> None:
    """Charge the step running right now to its session, and show a stall in progress on its row.

    A step's time reaches the session's counters when the step ends; without this, a session stuck
    for seconds would read 0% CPU until it lets go, exactly when the operator looks at it.
    """
    clock = monitor.clock
    started, step = clock.started, clock.current
    if step is None or clock.started != started:
        return
    held = max(0.0, perf_counter() - started)
    session_id = step.stats.session.id
    for row in rows:
        if row["session_id"] != session_id or row["state"] in ENDED_STATES:
            continue
        row["cpu_pct"] = round(min(100.0, row["cpu_pct"] + share_pct(held, span)), 2)
        row["cpu_s"] = round(row["cpu_s"] + held, 4)
        if ongoing is not None and ongoing.session_id == session_id:
            row["slow"] = True
            row["blocks"] += 1
            row["last_block"] = {"ms": ongoing.ms, "at": ongoing.at, "where": ongoing.where, "ongoing": True}
        return


def _row(
    session: Session, monitor: Monitor, oldest: int, span: float, now: float, share: float, active: bool
) -> dict[str, Any]:
    stats = session.stats
    child = session.process
    duration = (now if active else session.ended_at or now) - session.started_mono
    if child is not None:  # its own process: the OS's figures, not the worker loop's
        cpu = child.cpu_pct(span, now) if active else 0.0
        cpu_s = child.cpu_s
        mem = child.rss_mb if active else 0.0
        peak = child.peak_mb
    else:
        busy = stats.busy_s if stats is not None else 0.0
        cpu = share_pct(stats.busy_since(oldest) if stats is not None else 0.0, span) if active else 0.0
        cpu_s = busy
        mem = share if active else 0.0
        peak = monitor.peak_share_since(session.started_mono, mem)
    watched = stats is not None and child is None  # stalls inside a child are not watched
    last_block = stats.last_block if watched else None
    return {
        "session_id": session.id,
        "agent": session.agent,
        "tenant": session.tenant,
        "state": session.state.value,
        "reason": session.reason,
        "pid": session.pid,
        "started_at": session.started_at,
        "duration_s": round(duration, 3),
        "cpu_pct": round(cpu, 2),
        "cpu_s": round(cpu_s, 4),
        "mem_mb": round(mem, 2),
        "peak_mb": round(peak, 2),
        "tasks": live_tasks(session) if active and child is None else 0,
        "slow": watched and stats.blocks > 0 and now - stats.last_block_mono <= SLOW_FOR_S,
        "blocks": stats.blocks if watched else 0,
        "last_block": plain(last_block) if last_block is not None else None,
        "error": session.error_text,
        "usage": usage_info(getattr(session.usage, "totals", None)),
        **capacity_fields(session.capacity, active),
    }


def capacity_fields(capacity: Any, active: bool) -> dict[str, Any]:
    """The capacity hook's class and KV estimate of a session (`session.capacity`, read, not imported)."""
    if capacity is None:
        return {"token_class": None, "kv_bytes": None}
    kv = capacity.kv_bytes
    return {
        "token_class": capacity.token_class,
        "kv_bytes": None if kv is None else round(kv) if active else 0,
    }
