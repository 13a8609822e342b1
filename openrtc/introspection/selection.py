"""Which sessions a viewer asked for: filters, sort order and a row limit, and the order itself.

A worker of 10,000 sessions answers the live `top` (forty rows on screen) with the rows it shows, not
all of them: the viewer sends a `Selection` with its `snapshot` request, the worker orders every
session by a cheap key and builds the full rows of the first `limit` only. The viewer orders rows
with `order_key`; the worker builds the same order from float keys (`snapshot._select`), so a viewer
merging several workers' rows sorts them as each worker did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openrtc.errors import ProtocolError

SORT_KEYS = ("cpu", "mem", "age", "blocks", "cost", "agent")
STATES = ("starting", "running", "draining", "ended", "failed", "cancelled")
FINISHED = frozenset({"ended", "failed", "cancelled"})
MAX_LIMIT = 100_000
"""The largest `limit` a request may ask for (more than any worker holds)."""


@dataclass(frozen=True)
class Filters:
    """What the operator asked to see."""

    agent: str | None = None
    """Only this agent."""
    tenant: str | None = None
    """Only this tenant."""
    status: str | None = None
    """Only this state."""
    token_class: str | None = None
    """Only this token class."""
    search: str | None = None
    """Only rows whose id, agent, tenant, last block or error contain this text (any case)."""


@dataclass(frozen=True)
class Selection:
    """What a `snapshot` request asks for; without one the worker sends every session."""

    sort: str = "cpu"
    """One of `SORT_KEYS`."""
    limit: int = 100
    """At most this many rows, the first in `sort` order after `filters` (among equal keys, the
    sessions started first)."""
    filters: Filters = field(default_factory=Filters)
    """Only sessions that pass these."""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"sort": self.sort, "limit": self.limit}
        chosen = {k: v for k, v in vars(self.filters).items() if v is not None}
        if chosen:
            wire["filters"] = chosen
        return wire


def selection_from_wire(request: Mapping[str, Any]) -> Selection | None:
    """The selection in a `snapshot` request (`sort`, `limit`, `filters`), None when it has no `limit`;
    `ProtocolError` when it is malformed."""
    limit = request.get("limit")
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_LIMIT:
        raise ProtocolError(f"'limit' must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    sort = request.get("sort", "cpu")
    if sort not in SORT_KEYS:
        raise ProtocolError(f"'sort' must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
    raw = request.get("filters") or {}
    if not isinstance(raw, dict):
        raise ProtocolError("'filters' must be an object")
    known = set(Filters.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ProtocolError(f"unknown filters {sorted(unknown)}; known: {sorted(known)}")
    if any(v is not None and not isinstance(v, str) for v in raw.values()):
        raise ProtocolError("each filter must be a string")
    return Selection(sort, limit, Filters(**raw))


def order_key(
    sort: str, slow: bool, state: str, session_id: str, value: float | None, agent: str
) -> tuple[bool, bool, float | str, str]:
    """Where a session goes: slow sessions first, then live before finished, then by `sort`
    (descending, except `agent`). `value` is the sort's figure (CPU %, MB, seconds, blocks, cost;
    a cost of None, unknown, sorts after every known one)."""
    finished = state in FINISHED
    if sort == "agent":
        return (not slow, finished, agent, session_id)
    return (not slow, finished, 1.0 if value is None else -value, session_id)


def passes(
    filters: Filters,
    agent: str,
    tenant: str | None,
    state: str,
    token_class: str | None,
    searched: tuple[str, ...],
) -> bool:
    """`searched`: the texts `filters.search` looks in (id, agent, tenant, last block, error)."""
    if filters.search is not None:
        text = filters.search.lower()
        if not any(text in h.lower() for h in searched):
            return False
    return (
        (filters.agent is None or agent == filters.agent)
        and (filters.tenant is None or tenant == filters.tenant)
        and (filters.status is None or state == filters.status)
        and (filters.token_class is None or token_class == filters.token_class)
    )
