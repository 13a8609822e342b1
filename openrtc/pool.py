"""`AgentPool`: the runtime's pool with openrtc's own plug-ins composed in. The runtime (at the bottom)
imports none of them; this is the one place that puts them together."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openrtc.introspection.hook import IntrospectionConfig, IntrospectionHook
from openrtc.profile.hook import ProfileHook
from openrtc.runtime.hooks import Hook
from openrtc.runtime.pool import Pool
from openrtc.runtime.session import Session
from openrtc.usage.hook import UsageConfig, UsageHook


class AgentPool(Pool):
    """Runs agent sessions in this process. Use `run()` (blocking), `serve()`, or `async with`.

    Its hooks, in order: introspection (`enable_introspection=True`, the default; with `False` there is
    none: no thread, no socket, no task factory, no timer) and the CPU profiler that comes with it
    (nothing runs until a profile is asked for on the socket), usage (always: every session gets
    `session.usage`; `usage=UsageConfig(log_dir=...)` also writes the event log), then `hooks`, the
    caller's own (`openrtc.Hook` subclasses), in the order given.
    """

    def __init__(
        self,
        *,
        isolation: str = "coroutine",
        enable_introspection: bool = True,
        slow_session_threshold_ms: float = 50,
        max_sessions: int | None = None,
        max_sessions_per_agent: int | None = None,
        max_sessions_per_tenant: int | None = None,
        memory_warn_mb: float | None = None,
        memory_limit_mb: float | None = None,
        drain_timeout_s: float = 30.0,
        socket_path: str | os.PathLike[str] | None = None,
        usage: UsageConfig | None = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.introspection: IntrospectionHook | None = None
        """The introspection hook, or None when it is off."""
        self.usage = UsageHook(usage)
        """The usage hook: the worker's totals, the event log."""
        ours: list[Hook] = []
        if enable_introspection:
            config = IntrospectionConfig(
                slow_session_threshold_ms, Path(socket_path) if socket_path is not None else None
            )
            self.introspection = IntrospectionHook(config, self.usage)
            profiler = ProfileHook(self.introspection)
            self.introspection.ops["profile"] = profiler.op_profile
            ours.append(self.introspection)
            ours.append(profiler)
        ours.append(self.usage)
        super().__init__(
            isolation=isolation,
            max_sessions=max_sessions,
            max_sessions_per_agent=max_sessions_per_agent,
            max_sessions_per_tenant=max_sessions_per_tenant,
            memory_warn_mb=memory_warn_mb,
            memory_limit_mb=memory_limit_mb,
            drain_timeout_s=drain_timeout_s,
            hooks=[*ours, *hooks],
        )

    async def __aenter__(self) -> AgentPool:
        await self.start()
        return self

    @property
    def socket_path(self) -> Path | None:
        """Where the worker listens, once started with introspection on."""
        return self.introspection.socket_path if self.introspection is not None else None

    def session_of(self, task: asyncio.Future[Any]) -> Session | None:
        """The session that owns a task; None when untagged or introspection is off."""
        return self.introspection.session_of(task) if self.introspection is not None else None
