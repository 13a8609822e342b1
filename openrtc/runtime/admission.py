"""Admission: whether a new session may start. Pure functions over counts, so every cap is tested alone."""

from __future__ import annotations

from dataclasses import dataclass

from openrtc.errors import SessionRefused


@dataclass(frozen=True)
class Limits:
    """Caps on concurrent sessions; None means no cap."""

    max_sessions: int | None = None
    """Sessions of the whole worker."""
    max_sessions_per_agent: int | None = None
    """Sessions of one agent."""
    max_sessions_per_tenant: int | None = None
    """Sessions of one tenant (sessions without a tenant are not counted against any)."""


def check_admission(
    limits: Limits,
    *,
    agent: str,
    tenant: str | None,
    active: int,
    active_for_agent: int,
    active_for_tenant: int,
) -> None:
    """Raise `SessionRefused` naming the first cap a new session would break."""
    if limits.max_sessions is not None and active >= limits.max_sessions:
        raise SessionRefused(
            "max_sessions", f"worker is full: {active} of max_sessions={limits.max_sessions} sessions active"
        )
    if limits.max_sessions_per_agent is not None and active_for_agent >= limits.max_sessions_per_agent:
        raise SessionRefused(
            "max_sessions_per_agent",
            f"agent {agent!r} is full: {active_for_agent} of "
            f"max_sessions_per_agent={limits.max_sessions_per_agent} sessions active",
        )
    if (
        tenant is not None
        and limits.max_sessions_per_tenant is not None
        and active_for_tenant >= limits.max_sessions_per_tenant
    ):
        raise SessionRefused(
            "max_sessions_per_tenant",
            f"tenant {tenant!r} is full: {active_for_tenant} of "
            f"max_sessions_per_tenant={limits.max_sessions_per_tenant} sessions active",
        )
