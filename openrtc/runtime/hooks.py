"""The pool's seam: hooks that see the pool start, every session start and finish, the drain and the
close. Introspection is one (`openrtc.introspection.hook`); so are the subsystems that come next, and
so can a user's own. In the spirit of trio's `Instrument`: a small interface of optional methods.

Order and threads: every method but the last two is called on the event loop's thread, hooks in the
order they were given, and must not block (it runs in the loop's time). `started` comes once, when
the pool has started (agents loaded and prewarmed). `session_started` comes once per session, before
its code's first step; `session_finished` once, after its end state is set, whatever the end (ended,
failed, cancelled, abandoned by a drain), then the session's end line is logged. `session_event`
comes for each event a plug-in reports between the two (an LLM call, a block). `draining` comes once
when the drain begins, `closed` once at the very end.

`loop_holder` and `emergency_exit` are called from the drain deadline's own thread while the loop
thread is stuck (see `runtime.signals`): read, do not touch loop objects.

A hook that raises is logged with its name (at most once per `ERROR_LOG_EVERY_S` per hook) and
counted in `Pool.hook_errors`; it never reaches a session, and the other hooks still run. One
exception: a hook marked `required` that fails in `started` stops the pool from starting (the error
is raised by `start`), as introspection does when it cannot open its socket safely.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openrtc.runtime.session import Session
    from openrtc.runtime.view import PoolView

log = logging.getLogger("openrtc.hooks")

ERROR_LOG_EVERY_S = 5.0


class Hook:
    """Base class of the pool's hooks: override what you need; the rest do nothing.

    ```python
    class CountEnds(Hook):
        def __init__(self) -> None:
            self.ends: Counter[str] = Counter()

        def session_finished(self, session: Session) -> None:
            self.ends[session.state.value] += 1

    pool = AgentPool(hooks=[CountEnds()])
    ```
    """

    required = False
    """True when the pool must not run without it: an error in its `started` fails the pool's start."""

    def child_setup(self) -> tuple[str, dict[str, Any]] | None:
        """(`module:function`, keyword arguments): called as `function(session, **kwargs)` in each
        session's own process (process isolation) before its code runs, so that what the hook attaches
        to a session in the worker is there too. The arguments cross a pipe: plain values only."""
        return None

    @property
    def name(self) -> str:
        """How logs and `Pool.hook_errors` name it (the class name by default)."""
        return type(self).__name__

    def started(self, pool: PoolView) -> None:
        """The pool has started; `pool` is its read-only view (safe to keep and read from any thread)."""

    def session_started(self, session: Session) -> None:
        """A session was admitted; its code has not run yet."""

    def session_finished(self, session: Session) -> None:
        """A session finished: `session.state` and `session.reason` say how."""

    def session_event(self, session: Session | None, kind: str, data: dict[str, Any]) -> None:
        """An event a plug-in reported (`Session.emit`, `PoolView.emit`): `kind` (`llm.call`, `block`...)
        and its data; `session` is None for an event of the worker. Do not keep `data` mutable: copy
        what you keep."""

    def draining(self) -> None:
        """The pool stops accepting sessions and drains."""

    def closed(self) -> None:
        """The pool is closed: every session has finished or been abandoned."""

    def loop_holder(self) -> str | None:
        """Who holds the event loop now, in words, if this hook knows (asked at the drain deadline, from
        another thread)."""
        return None

    def emergency_exit(self) -> None:
        """The worker exits at once (the drain deadline passed): remove what must not outlive it
        (called from another thread, the loop thread being stuck)."""


class Hooks:
    """Calls every hook's method in order, isolating each hook's errors."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        for hook in hooks:
            if not isinstance(hook, Hook):
                raise TypeError(f"a hook must be an openrtc Hook, got {hook!r}")
        self.hooks = tuple(hooks)
        self.errors: Counter[str] = Counter()
        """Exceptions raised by each hook (by name) since the pool was made."""
        self._logged_at: dict[str, float] = {}
        self._sender: Callable[[Any, str, dict[str, Any]], None] | None = None
        # Per method, only the hooks that override it: `session_event` runs for every LLM call.
        self._callers: dict[str, list[tuple[Hook, Any]]] = {
            method: [
                (h, getattr(h, method))
                for h in self.hooks
                if getattr(type(h), method) is not getattr(Hook, method)
            ]
            for method in (
                "session_started",
                "session_finished",
                "session_event",
                "draining",
                "closed",
                "emergency_exit",
            )
        }

    def child_setups(self) -> list[tuple[str, dict[str, Any]]]:
        """What each session's own process runs first (see `Hook.child_setup`)."""
        return [setup for h in self.hooks if (setup := h.child_setup()) is not None]

    def event_sender(self) -> Callable[[Any, str, dict[str, Any]], None]:
        """`session.emit`'s target, `(session, kind, data)`: `session_event` of each hook that has one,
        as directly as it can be (it runs for every LLM and tool call, on the loop). One for all the
        sessions: a closure each would cost every idle session 300 bytes."""
        if self._sender is not None:
            return self._sender
        callers = self._callers["session_event"]
        if len(callers) == 1:
            (hook, bound), failed = callers[0], self._failed

            def send_one(session: Any, kind: str, data: dict[str, Any]) -> None:
                try:
                    bound(session, kind, data)
                except Exception as exc:
                    failed(hook, "session_event", exc)

            self._sender = send_one
        else:

            def send(session: Any, kind: str, data: dict[str, Any]) -> None:
                self.call("session_event", session, kind, data)

            self._sender = send
        return self._sender

    def call(self, method: str, *args: Any) -> None:
        for hook, bound in self._callers[method]:
            try:
                bound(*args)
            except Exception as exc:
                self._failed(hook, method, exc)

    def start(self, view: PoolView) -> None:
        """`started` on each hook; a required hook's error is raised (after the hooks before it)."""
        for hook in self.hooks:
            try:
                hook.started(view)
            except Exception as exc:
                if hook.required:
                    raise
                self._failed(hook, "started", exc)

    def first(self, method: str) -> Any:
        """The first answer that is not None (for `loop_holder`)."""
        for hook in self.hooks:
            try:
                answer = getattr(hook, method)()
            except Exception as exc:
                self._failed(hook, method, exc)
                continue
            if answer is not None:
                return answer
        return None

    def _failed(self, hook: Hook, method: str, exc: Exception) -> None:
        name = hook.name
        self.errors[name] += 1
        now = time.monotonic()
        if now - self._logged_at.get(name, -ERROR_LOG_EVERY_S) >= ERROR_LOG_EVERY_S:
            self._logged_at[name] = now
            log.error(
                "hook %s failed in %s (%d errors so far); the pool and its sessions go on",
                name,
                method,
                self.errors[name],
                exc_info=exc,
            )
