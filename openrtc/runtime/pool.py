"""The runtime's pool: runs sessions of many agents on one event loop, caps them and drains them.

It knows agents, sessions, caps, memory thresholds, the drain and the signals; it runs each session
through a runner (`runners`: in the loop, or in a process of its own) and tells its hooks (`hooks`)
what happens. It imports none of its plug-ins: `openrtc.AgentPool` composes it with introspection.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from openrtc.errors import (
    AgentLoadError,
    ConfigError,
    OpenRTCError,
    SessionRefused,
    UnknownAgentError,
    error_summary,
)
from openrtc.runtime.admission import Limits, check_admission
from openrtc.runtime.agent import AgentSpec, make_spec
from openrtc.runtime.config import PoolConfig
from openrtc.runtime.control import PoolControl
from openrtc.runtime.discovery import Discovery, discover
from openrtc.runtime.hooks import Hook, Hooks
from openrtc.runtime.loops import loop_factory
from openrtc.runtime.memory import MemoryEvent, MemoryGuard, MemoryThresholds, process_rss_mb
from openrtc.runtime.runners import SessionRunner, make_runner
from openrtc.runtime.session import (
    Session,
    SessionFailed,
    SessionHandle,
    SessionState,
    cancel_session,
    current_session,
)
from openrtc.runtime.signals import (
    DEADLINE_GRACE_S,
    EXIT_DRAIN_DEADLINE,
    QUICK_SIGNALS,
    DrainDeadline,
    capture_signals,
    loop_thread_position,
)
from openrtc.runtime.view import PoolView

log = logging.getLogger("openrtc.pool")

CANCEL_GRACE_S = 5.0
"""After a drain cancels what is left, how long it waits for those sessions to unwind."""
LEFTOVER_GRACE_S = 1.0
"""After the drain, how long tasks still alive (stray tasks, sessions already abandoned) get to end."""
REFUSAL_LOG_EVERY_S = 5.0
"""Refusals are counted one by one but logged at most this often per reason."""


def run_worker_loop(
    main: Coroutine[Any, Any, None], factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """Run `main` on a new loop, like `asyncio.run`, but never wait forever for leftover tasks, and
    start the loop again if something stops it before `main` is done."""
    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        task = loop.create_task(main, name="openrtc-worker")
        while True:
            try:
                loop.run_until_complete(task)
                break
            except RuntimeError as exc:
                if task.done() or "stopped before Future completed" not in str(exc):
                    raise
                # Session code cannot stop the loop (see `loops`): this came from outside any session.
                log.error("the event loop was stopped by code outside any session; starting it again")
        _cancel_leftovers(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still alive after a drain, and wait for them a bounded time.

    `asyncio.run` and `asyncio.Runner` wait for every cancelled task without limit, so one task that
    ignores cancellation (caught in a loop) would keep the worker from ever exiting.
    """
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=LEFTOVER_GRACE_S))
        if stuck:
            log.error("%d tasks ignored cancellation; exiting without them", len(stuck))


class Pool:
    """Runs agent sessions in this process, with the hooks it is given and no others.

    `openrtc.AgentPool` is this pool with openrtc's own plug-ins composed in (introspection); use it.
    """

    def __init__(
        self,
        *,
        isolation: str = "coroutine",
        max_sessions: int | None = None,
        max_sessions_per_agent: int | None = None,
        max_sessions_per_tenant: int | None = None,
        memory_warn_mb: float | None = None,
        memory_limit_mb: float | None = None,
        drain_timeout_s: float = 30.0,
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.config = PoolConfig(
            isolation=isolation,
            limits=Limits(max_sessions, max_sessions_per_agent, max_sessions_per_tenant),
            memory=MemoryThresholds(memory_warn_mb, memory_limit_mb),
            drain_timeout_s=drain_timeout_s,
        )
        self.hooks = Hooks(hooks)
        self.worker_id = os.urandom(6).hex()
        self.started_at = time.time()
        self._runner: SessionRunner = make_runner(
            isolation, memory_warn_mb, memory_limit_mb, self.hooks.child_setups()
        )
        # In process mode the thresholds apply to each session's process (the runner), not the worker.
        worker_memory = self.config.memory if not self._runner.per_session_memory else MemoryThresholds()
        self.memory = MemoryGuard(worker_memory, process_rss_mb)
        self._agents: dict[str, AgentSpec] = {}
        self._origins: dict[str, str] = {}
        """`module:qualname` of agents added from code, for a process runner to import them."""
        self.agent_names: tuple[str, ...] = ()
        """Registered agents, republished whole on each change so other threads can read it."""
        self._shared: dict[str, dict[str, Any]] = {}
        self._prewarmed: set[str] = set()
        self._prewarm_locks: dict[str, asyncio.Lock] = {}
        self._sessions: dict[str, Session] = {}
        self._by_agent: Counter[str] = Counter()
        self._by_tenant: Counter[str] = Counter()
        self.sessions_started = 0
        self.sessions_failed = 0
        self.sessions_refused: Counter[str] = Counter()
        """Refused sessions since start, by reason (`SessionRefused.reason`)."""
        self._refusals_logged_at: dict[str, float] = {}
        self._refusals_unlogged: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = "new"  # new -> starting -> running -> draining -> closed
        self._draining: asyncio.Event | None = None
        self._shutdown: asyncio.Event | None = None
        self._serving = False
        """True under `serve`: it says `worker started` itself, once the signals are captured."""
        self._drain_task: asyncio.Task[None] | None = None
        self._deadline: DrainDeadline | None = None
        self._loop_thread_id = 0
        self.view: PoolView | None = None
        """The read side, for other threads (from the start)."""
        self.control: PoolControl | None = None
        """The thread-safe door, for front ends on other threads (from the start)."""

    @property
    def hook_errors(self) -> Counter[str]:
        """Exceptions raised by each hook, by name, since the pool was made."""
        return self.hooks.errors

    # -- agents ---------------------------------------------------------------------------------

    def add(self, name: str, agent: object) -> AgentSpec:
        """Register `agent` (an `Agent` subclass or `async def f(session)`) under `name`."""
        if name in self._agents:
            raise ConfigError(f"agent {name!r} is already registered")
        spec = make_spec(name, agent)
        module, qualname = getattr(agent, "__module__", None), getattr(agent, "__qualname__", "")
        if module and module != "__main__" and "<locals>" not in qualname:
            self._origins[name] = f"{module}:{qualname}"
        self._set_agent(spec)
        return spec

    def discover(self, folder: str | os.PathLike[str]) -> Discovery:
        """Register every agent file of `folder`; broken files are logged with file:line and skipped."""
        found = discover(folder)
        for error in found.errors:
            log.error("agent file not loaded: %s", error)
        for spec in found.agents:
            if spec.name in self._agents:
                log.error(
                    "agent file not loaded: %s:%d: agent %r is already registered",
                    spec.source,
                    spec.line,
                    spec.name,
                )
                continue
            self._set_agent(spec)
        return found

    async def replace(self, spec: AgentSpec) -> None:
        """Swap in a new version of an agent (hot reload): prewarm it first, keep the old one on failure
        (raises `AgentLoadError`). Sessions already running keep the code they started with."""
        if self._state == "running":
            try:
                shared = await self._runner.reload(spec, self._origins.get(spec.name))
            except AgentLoadError:
                raise
            except Exception as exc:
                raise AgentLoadError(spec.source or spec.name, 0, f"prewarm raised {exc!r}") from exc
            self._shared[spec.name] = shared
            self._prewarmed.add(spec.name)
        else:
            self._prewarmed.discard(spec.name)
        self._set_agent(spec, announce=False)  # the reloader says what it did

    def remove(self, name: str) -> None:
        """Unregister an agent; its running sessions finish, new ones are refused."""
        self._agents.pop(name, None)
        self._prewarmed.discard(name)
        self._shared.pop(name, None)
        self.agent_names = tuple(sorted(self._agents))

    def _set_agent(self, spec: AgentSpec, announce: bool = True) -> None:
        new = spec.name not in self._agents
        self._agents[spec.name] = spec
        self.agent_names = tuple(sorted(self._agents))
        if new and announce and self._state == "running":
            log.info("agent %r added", spec.name)

    def agent(self, name: str) -> AgentSpec:
        try:
            return self._agents[name]
        except KeyError:
            raise UnknownAgentError(name, list(self.agent_names)) from None

    def code_dirs(self, agent: str) -> tuple[str, ...]:
        """The folders whose frames count as `agent`'s own code (a stall's blame)."""
        spec = self._agents.get(agent)
        return (spec.code_dir,) if spec is not None and spec.code_dir else ()

    # -- state ----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """`new`, `starting`, `running`, `draining` or `closed`."""
        return self._state

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def sessions(self) -> Mapping[str, Session]:
        """Active sessions by id (a live view: copy it before iterating from another thread)."""
        return self._sessions

    @property
    def sessions_active(self) -> int:
        return len(self._sessions)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Pool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start on the running loop: the runner, each agent's prewarm, then the hooks."""
        if self._state != "new":
            raise OpenRTCError(f"pool cannot start: it is {self._state}")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        self._draining = asyncio.Event()
        self._shutdown = asyncio.Event()
        self.view = PoolView(self, loop)
        self.control = PoolControl(self, loop)
        self.view.control = self.control
        self._state = "starting"
        try:
            agents = [(spec, self._origins.get(spec.name)) for spec in self._agents.values()]
            await self._runner.start(loop, agents)
            for spec in list(self._agents.values()):
                try:
                    await self._prewarm(spec)
                except SessionRefused:
                    continue  # logged; each new session of that agent retries the prewarm
            self.hooks.start(self.view)
        except BaseException:
            await self.aclose()
            raise
        self._state = "running"
        if not self._serving:
            self._announce()

    def _announce(self) -> None:
        # Embedded (`async with AgentPool()`), agents are usually added after the start: each is then
        # logged as it is added. Under `serve`, the line comes once the signals are captured: whoever
        # waits for it (a supervisor, a test) may send SIGTERM at once and see a drain, not a kill.
        log.info("worker started pid=%d agents=%s", os.getpid(), ",".join(self.agent_names) or "(none yet)")

    async def aclose(self) -> None:
        """Drain (if not done yet), then stop the runner and tell the hooks."""
        if self._state == "closed":
            return
        if self._state in ("running", "draining"):
            await self.drain()
        self._state = "closed"
        await self._runner.close()
        self.hooks.call("closed")

    def run(self, loop: str = "auto") -> None:
        """Run the worker until a drain signal or `drain()`, then drain and return."""
        run_worker_loop(self.serve(), loop_factory(loop))

    async def serve(self) -> None:
        """Start, wait for a drain signal or request, drain, close (see `runtime.signals`).

        The drain has a hard deadline: if the event loop is blocked when the drain timeout has passed,
        a thread of the worker writes every session's end line, removes the socket and exits the
        process with `EXIT_DRAIN_DEADLINE`.
        """
        self._serving = True
        await self.start()
        assert self._loop is not None and self._shutdown is not None
        deadline = DrainDeadline(self._loop, self.config.drain_timeout_s, self._give_up)
        self._deadline = deadline
        deadline.start()
        try:
            with capture_signals(self._loop, self._on_signal, deadline.arm):
                self._announce()
                await self._shutdown.wait()
                await self.aclose()  # signals still captured: a second one cancels everything
        finally:
            await self.aclose()
            self._deadline = None
            deadline.close()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._state == "running" and signum not in QUICK_SIGNALS:
            log.info("received %s: draining (timeout %.1fs)", name, self.config.drain_timeout_s)
            self.request_drain()
            return
        if self._state == "running":
            log.warning("received %s: cancelling every session now", name)
            self.request_drain()
        else:
            log.warning("received %s during the drain: cancelling every session now", name)
        for session in list(self._sessions.values()):
            cancel_session(session, "signal")

    def _give_up(self, why: str) -> None:
        """The drain's hard deadline passed (called on the deadline's thread, the loop thread being
        stuck): write each session's end line, let the hooks clean up, exit."""
        held_by = self.hooks.first("loop_holder") or loop_thread_position(self._loop_thread_id)
        for session in list(self._sessions.values()):
            session.log.error(
                "session cancelled reason=loop_blocked duration=%.3fs: "
                "the drain deadline passed (%s, held by %s)",
                time.perf_counter() - session.started_mono,
                why,
                held_by,
            )
        log.error(
            "drain deadline passed %.1fs after the drain began: %s by %s; exiting with code %d",
            self.config.drain_timeout_s + DEADLINE_GRACE_S,
            why,
            held_by,
            EXIT_DRAIN_DEADLINE,
        )
        self.hooks.call("emergency_exit")
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_DRAIN_DEADLINE)

    def request_drain(self) -> None:
        """Start a drain in the background (what signals and the socket's `drain` op do)."""
        if self._drain_task is None and self._loop is not None:
            # A fresh context: never a task of whichever session's code asked.
            self._drain_task = self._loop.create_task(
                self.drain(), name="openrtc-drain", context=contextvars.Context()
            )

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting, set every session's `draining`, wait up to `timeout`, then cancel the rest."""
        if self._state in ("new", "closed"):
            return
        current = asyncio.current_task()
        if self._drain_task is not None and self._drain_task is not current:
            await asyncio.shield(self._drain_task)
            return
        if self._drain_task is None:
            self._drain_task = current
        assert self._draining is not None and self._shutdown is not None
        timeout = self.config.drain_timeout_s if timeout is None else timeout
        if self._deadline is not None:
            self._deadline.arm()  # a drain from the socket or from code has the same hard deadline
        self._state = "draining"
        self._shutdown.set()
        self._draining.set()
        self.hooks.call("draining")
        sessions = list(self._sessions.values())
        for session in sessions:
            if session.state in (SessionState.STARTING, SessionState.RUNNING):
                session.state = SessionState.DRAINING
        log.info("draining %d sessions (timeout %.1fs)", len(sessions), timeout)
        roots = [s._root for s in sessions if s._root is not None]
        if roots:
            _, pending = await asyncio.wait(roots, timeout=timeout)
            if pending:
                log.warning("drain timeout: cancelling %d sessions still running", len(pending))
                for session in list(self._sessions.values()):
                    cancel_session(session, "drain_timeout")
                _, stuck = await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
                by_root = {s._root: s for s in sessions}
                for task in stuck:
                    log.error(
                        "session task %s ignored cancellation for %.0fs; abandoning it",
                        task.get_name(),
                        CANCEL_GRACE_S,
                    )
                    abandoned = by_root.get(task)
                    if abandoned is not None:
                        self._finish(abandoned)  # accounted for now: its task may never end
        log.info("drained: started=%d failed=%d", self.sessions_started, self.sessions_failed)

    # -- sessions -------------------------------------------------------------------------------

    async def start_session(
        self,
        agent: str,
        *,
        tenant: str | None = None,
        metadata: dict[str, Any] | None = None,
        session_id: str | None = None,
        attempt: int = 1,
    ) -> SessionHandle:
        """Start a session of `agent`; raises `UnknownAgentError` or `SessionRefused` (naming why).

        `session_id` gives the session an id of the caller's (a fleet request's); by default a random
        one. `attempt` is which delivery of that request this is.
        """
        try:
            if self._state != "running":
                reason = "draining" if self._state == "draining" else "not_running"
                raise SessionRefused(reason, f"worker is {self._state}; not accepting new sessions")
            spec = self.agent(agent)
            if spec.name not in self._prewarmed:
                await self._prewarm(spec)
            return self._start_now(spec, tenant, dict(metadata) if metadata else {}, session_id, attempt)
        except SessionRefused as exc:
            self._note_refusal(exc)
            raise

    def _note_refusal(self, exc: SessionRefused) -> None:
        """Count every refusal; log each reason at most once per `REFUSAL_LOG_EVERY_S`, with how many
        were refused meanwhile (a caller retrying in a loop must not flood the log)."""
        reason = exc.reason
        self.sessions_refused[reason] += 1
        self._refusals_unlogged[reason] += 1
        now = time.monotonic()
        if now - self._refusals_logged_at.get(reason, -REFUSAL_LOG_EVERY_S) >= REFUSAL_LOG_EVERY_S:
            count = self._refusals_unlogged.pop(reason)
            self._refusals_logged_at[reason] = now
            since = f" ({count} since the last such line)" if count > 1 else ""
            log.warning("refused a session (%s): %s%s", reason, exc, since)

    def _start_now(
        self,
        spec: AgentSpec,
        tenant: str | None,
        metadata: dict[str, Any],
        session_id: str | None,
        attempt: int,
    ) -> SessionHandle:
        # No await from the checks to the registration: admission decisions cannot interleave.
        if self._state != "running":
            raise SessionRefused("draining", f"worker is {self._state}; not accepting new sessions")
        self._check_memory()
        check_admission(
            self.config.limits,
            agent=spec.name,
            tenant=tenant,
            active=len(self._sessions),
            active_for_agent=self._by_agent[spec.name],
            active_for_tenant=self._by_tenant[tenant] if tenant is not None else 0,
        )
        assert self._loop is not None and self._draining is not None
        if session_id is None:
            session_id = os.urandom(6).hex()
            while session_id in self._sessions:
                session_id = os.urandom(6).hex()
        elif session_id in self._sessions:
            raise SessionRefused("duplicate", f"session {session_id!r} is already running here")
        session = Session(
            session_id, spec.name, tenant, metadata, self._shared.get(spec.name, {}), self._draining, attempt
        )
        session._emit = self.hooks.event_sender()
        self.hooks.call("session_started", session)  # before its first step: its tasks get tagged
        context = contextvars.copy_context()
        context.run(current_session.set, session)
        self._sessions[session_id] = session
        self._by_agent[spec.name] += 1
        if tenant is not None:
            self._by_tenant[tenant] += 1
        self.sessions_started += 1
        root = self._loop.create_task(
            self._run_session(session, spec), name=f"openrtc-session-{session_id}", context=context
        )
        session._root = root
        root.add_done_callback(lambda _: self._finish(session))
        return SessionHandle(session)

    def _check_memory(self) -> None:
        if not self.memory.enabled:
            return
        self.log_memory_events(self.memory.poll())
        if self.memory.above_limit:
            raise SessionRefused(
                "memory_limit",
                f"worker RSS {self.memory.last_rss_mb:.0f} MB is above memory_limit_mb="
                f"{self.config.memory.limit_mb:g}; refusing new sessions until it falls",
            )

    def observe_rss(self, rss_mb: float) -> None:
        """Check the memory thresholds against an RSS reading taken elsewhere (thread-safe)."""
        if self.memory.enabled:
            self.log_memory_events(self.memory.observe(rss_mb))

    def log_memory_events(self, events: list[MemoryEvent]) -> None:
        """Log each threshold crossing once (called from the loop or another thread)."""
        rss, thresholds = self.memory.last_rss_mb, self.config.memory
        for event in events:
            if event is MemoryEvent.WARN_ABOVE:
                log.warning("memory: RSS %.0f MB crossed memory_warn_mb=%g", rss, thresholds.warn_mb)
            elif event is MemoryEvent.WARN_BELOW:
                log.info("memory: RSS %.0f MB back below memory_warn_mb=%g", rss, thresholds.warn_mb)
            elif event is MemoryEvent.LIMIT_ABOVE:
                log.error(
                    "memory: RSS %.0f MB crossed memory_limit_mb=%g; refusing new sessions",
                    rss,
                    thresholds.limit_mb,
                )
            else:
                log.warning(
                    "memory: RSS %.0f MB back below memory_limit_mb=%g; accepting sessions",
                    rss,
                    thresholds.limit_mb,
                )

    async def _prewarm(self, spec: AgentSpec) -> None:
        lock = self._prewarm_locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            if spec.name in self._prewarmed:
                return
            self._shared[spec.name] = await self._runner.prewarm(spec, self._origins.get(spec.name))
            self._prewarmed.add(spec.name)

    async def _run_session(self, session: Session, spec: AgentSpec) -> None:
        session.log.info("session started tenant=%s", session.tenant or "-")
        try:
            await self._runner.run(session, spec)
        except asyncio.CancelledError:
            session.state = SessionState.CANCELLED
            session.reason = session._cancel_reason or "cancelled"
        except SessionFailed as exc:  # found by the runner: its message is the whole story
            self._fail(session, exc.reason, exc, traceback=False)
        except Exception as exc:
            self._fail(session, "exception", exc)
        except SystemExit as exc:
            # sys.exit() in one session must not stop the worker.
            self._fail(session, "sys_exit", exc)
        else:
            session.state = SessionState.ENDED

    def _fail(self, session: Session, reason: str, exc: BaseException, traceback: bool = True) -> None:
        session.state = SessionState.FAILED
        session.reason = reason
        session.error = exc
        session.error_text = error_summary(exc)
        self.sessions_failed += 1
        if traceback:
            session.log.error("session raised %s", type(exc).__name__, exc_info=exc)
        else:  # a child process's failure: its own traceback is the message
            session.log.error("session failed (%s): %s", reason, exc)

    def _finish(self, session: Session) -> None:
        """Bookkeeping when a root task is done, however it ended (even cancelled before its first step)."""
        if session.id not in self._sessions:
            return  # already finished: abandoned by a drain, and its task ended later after all
        if not session.state.finished:
            session.state = SessionState.CANCELLED
            session.reason = session._cancel_reason or "cancelled"
        session.ended_at = time.perf_counter()
        leftovers = [t for coro, t in session.tasks.items() if not t.done() and not _closes_asyncgen(coro)]
        if leftovers:
            session.log.warning("session left %d tasks running; cancelling them", len(leftovers))
            for task in leftovers:
                task.cancel(msg="session_ended")
        del self._sessions[session.id]
        session.tasks.clear()
        self._by_agent[session.agent] -= 1
        if self._by_agent[session.agent] <= 0:
            del self._by_agent[session.agent]
        if session.tenant is not None:
            self._by_tenant[session.tenant] -= 1
            if self._by_tenant[session.tenant] <= 0:
                del self._by_tenant[session.tenant]
        self.hooks.call("session_finished", session)
        session.log.info(
            "session %s reason=%s duration=%.3fs",
            session.state.value,
            session.reason or "-",
            session.ended_at - session.started_mono,
        )

    def emit(self, session: Session | None, kind: str, data: dict[str, Any]) -> None:
        """Tell every hook of an event (on the loop thread); `session` None for the worker's own."""
        self.hooks.call("session_event", session, kind, data)

    def cancel(self, session_id: str, reason: str = "cancelled_by_user") -> bool:
        """Cancel an active session by id; False when no such session is active."""
        session = self._sessions.get(session_id)
        return session is not None and cancel_session(session, reason)


def _closes_asyncgen(coro: object) -> bool:
    """The coroutine of a task the loop made to close an async generator the garbage collector found
    unfinished (`loop._asyncgen_finalizer_hook`): cleanup, not the session's work. SDKs leave these
    (an `openai` stream's inner SSE generator, even after `async with stream`); it ends on its own, and
    cancelling it would skip the generator's `finally`."""
    return type(coro).__name__ == "async_generator_athrow"
