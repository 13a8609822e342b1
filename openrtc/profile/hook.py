"""CPU profiles on request: the `profile` op of the worker's socket, as one of the pool's hooks.

It reads the step clock and the garbage-collection pauses of the introspection hook (a CPU profile
stamps each sample with the session whose step runs, which only the step clock knows), so it comes
with introspection (`AgentPool` adds both). Until someone asks for a profile it holds nothing and
runs nothing; while one records, a waiter thread sends the reply when the recording ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
from typing import TYPE_CHECKING, Any

from openrtc.introspection.wire import error_reply, ok_reply
from openrtc.profile.sampler import MAX_HZ, MAX_SECONDS, Sampler
from openrtc.profile.stacks import Profile, ProfileError, Stack, add, from_wire, to_wire
from openrtc.runtime.hooks import Hook

if TYPE_CHECKING:
    from openrtc.introspection.hook import IntrospectionHook
    from openrtc.introspection.server import Respond
    from openrtc.runtime.session import Session
    from openrtc.runtime.view import PoolView

log = logging.getLogger("openrtc.profile")

START_WAIT_S = 5.0
"""How long a request waits for the event loop to start the recording (a blocked loop cannot)."""


class ProfileHook(Hook):
    """Serves `{"op": "profile", "seconds": 10, "hz": 100, "session_id": ..., "agent": ...}`."""

    def __init__(self, introspection: IntrospectionHook) -> None:
        self._introspection = introspection
        self._view: PoolView | None = None
        self._lock = threading.Lock()
        self._current: Sampler | None = None

    @property
    def name(self) -> str:
        return "profile"

    def child_setup(self) -> tuple[str, dict[str, Any]] | None:
        return ("openrtc.profile.child:attach", {})

    def started(self, pool: PoolView) -> None:
        self._view = pool

    def closed(self) -> None:
        sampler = self._current
        if sampler is not None:
            sampler.cancelled = True
            sampler.stop()  # `closed` runs on the loop thread: the handler may be removed here

    def op_profile(self, request: dict[str, Any], respond: Respond) -> None:
        """The socket op (runs on the server thread)."""
        monitor, view = self._introspection.monitor, self._view
        if monitor is None or view is None:
            respond(error_reply("not_running", "the worker is not running"))
            return
        seconds, hz = request.get("seconds", 10.0), request.get("hz", 100.0)
        session_id, agent = request.get("session_id"), request.get("agent")
        problem = None
        if not _number(seconds) or not 0 < seconds <= MAX_SECONDS:
            problem = f"'seconds' must be a number above 0 and at most {MAX_SECONDS:.0f}"
        elif not _number(hz) or not 0 < hz <= MAX_HZ:
            problem = f"'hz' must be a number above 0 and at most {MAX_HZ:.0f}"
        elif not all(v is None or (isinstance(v, str) and v) for v in (session_id, agent)):
            problem = "'session_id' and 'agent' must be non-empty strings when given"
        elif session_id is not None and view.session(session_id) is None:
            problem = f"no active session {session_id!r}"
        elif agent is not None and agent not in view.facts().agents:
            problem = f"unknown agent {agent!r}; known agents: {', '.join(view.facts().agents) or 'none'}"
        if problem is not None:
            respond(error_reply("bad_request", problem))
            return
        children: concurrent.futures.Future[Profile] | None = None
        if view.config.isolation == "process":
            # The sessions' code runs in their own processes: each samples itself, at the same time.
            targets = [
                s
                for s in view.sessions()
                if (session_id is None or s.id == session_id) and (agent is None or s.agent == agent)
            ]
            coro = self._ask_children(targets, float(seconds), float(hz))
            try:
                children = contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, view.loop)
            except RuntimeError:
                coro.close()
                respond(error_reply("not_running", "the worker's event loop is closed"))
                return
            if session_id is not None or agent is not None:  # nothing of theirs runs in the worker
                children.add_done_callback(lambda f: respond(_children_reply(f)))
                return
        sampler = Sampler(
            monitor.clock,
            monitor.gc.pauses,
            view.code_dirs,
            hz=float(hz),
            seconds=float(seconds),
            session_id=session_id,
            agent=agent,
        )
        with self._lock:
            if self._current is not None:
                respond(error_reply("busy", "a profile is already recording in this worker; try after it"))
                return
            self._current = sampler
        try:
            view.loop.call_soon_threadsafe(sampler.start, context=contextvars.Context())
        except RuntimeError:
            self._release(sampler)
            respond(error_reply("not_running", "the worker's event loop is closed"))
            return
        threading.Thread(
            target=self._wait, args=(sampler, respond, children), name="openrtc-profile", daemon=True
        ).start()

    async def _ask_children(self, sessions: list[Session], seconds: float, hz: float) -> Profile:
        """Every session's own process records at once; their profiles, merged (on the loop thread).
        A process that fails (it ended meanwhile) is counted in `children_failed`, not fatal."""
        answers = await asyncio.gather(
            *(self._ask_child(s, seconds, hz) for s in sessions), return_exceptions=True
        )
        stacks: dict[Stack, float] = {}
        metas = []
        for answer in answers:
            if isinstance(answer, BaseException):
                continue
            metas.append(answer.meta)
            for stack, weight in answer.stacks.items():
                add(stacks, stack, weight)
        if sessions and not metas:
            first = next(a for a in answers if isinstance(a, BaseException))
            raise ProfileError(f"no session's process could record: {first}")
        meta: dict[str, Any] = {
            "hz_target": hz,
            "seconds": max((m.get("seconds") or 0.0 for m in metas), default=0.0),
            "samples": sum(int(m.get("samples") or 0) for m in metas),
            "hz_achieved": round(sum(float(m.get("hz_achieved") or 0.0) for m in metas) / len(metas), 1)
            if metas
            else 0.0,
            "lateness_ms_p50": max((m.get("lateness_ms_p50") or 0.0 for m in metas), default=None),
            "lateness_ms_p99": max((m.get("lateness_ms_p99") or 0.0 for m in metas), default=None),
            "children": len(metas),
            "children_failed": len(sessions) - len(metas),
            "pids": [m.get("pid") for m in metas],
        }
        return Profile(stacks, "samples", "CPU", session_depth=2, sample_ms=1000.0 / hz, meta=meta)

    async def _ask_child(self, session: Session, seconds: float, hz: float) -> Profile:
        if session.child is None:
            raise ProfileError(f"session {session.id!r} has no process to profile (it has not started)")
        payload = {"seconds": seconds, "hz": hz, "code_dirs": list(self._code_dirs(session.agent))}
        wire = await asyncio.wait_for(session.child.ask("profile", payload), seconds + START_WAIT_S * 2)
        profile = from_wire(wire)  # checked here: a bad answer is the worker's error, not the client's
        # Everything of that process is the session's: its idle time and callbacks go under it too.
        head = ("worker", f"agent:{session.agent}", f"session:{session.id}")
        stacks: dict[Stack, float] = {}
        for stack, weight in profile.stacks.items():
            own = len(stack) >= 3 and stack[2].startswith("session:")
            add(stacks, head + (stack[3:] if own else stack[1:]), weight)
        return Profile(stacks, profile.unit, profile.title, 2, profile.sample_ms, profile.meta)

    def _code_dirs(self, agent: str) -> tuple[str, ...]:
        return self._view.code_dirs(agent) if self._view is not None else ()

    def _wait(
        self, sampler: Sampler, respond: Respond, children: concurrent.futures.Future[Profile] | None = None
    ) -> None:
        try:
            if not sampler.done.wait(START_WAIT_S + sampler.seconds) and not sampler.running:
                sampler.cancelled = True
                respond(
                    error_reply(
                        "blocked",
                        f"the event loop did not start the recording within {START_WAIT_S:.0f} s: "
                        "it is blocked (`openrtc top` shows by whom)",
                    )
                )
                return
            if not sampler.done.wait(START_WAIT_S):  # the loop stalled past the end: ask it to stop
                self._stop_on_loop(sampler)
                sampler.done.wait(START_WAIT_S)
            if sampler.error is not None:
                respond(error_reply("unsupported", sampler.error))
                return
            profile = sampler.profile()
            if children is not None:  # process isolation: the worker's own loop, and every session's
                profile = _merged(profile, children)
            log.info(
                "profile recorded: %d samples in %.1f s (%.0f Hz asked, %.0f achieved)",
                profile.meta["samples"],
                profile.meta["seconds"],
                sampler.hz,
                profile.meta["hz_achieved"],
            )
            respond(ok_reply({"profile": to_wire(profile)}))
        except ProfileError as exc:
            respond(error_reply("internal", str(exc)))
        finally:
            self._release(sampler)

    def _stop_on_loop(self, sampler: Sampler) -> None:
        if self._view is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing records any more
                self._view.loop.call_soon_threadsafe(sampler.stop, context=contextvars.Context())

    def _release(self, sampler: Sampler) -> None:
        with self._lock:
            if self._current is sampler:
                self._current = None


def _children_reply(future: concurrent.futures.Future[Profile]) -> dict[str, Any]:
    if future.cancelled():
        return error_reply("not_running", "the worker stopped before the sessions' processes answered")
    exc = future.exception()
    if exc is not None:
        return error_reply("unsupported", f"could not record: {exc}")
    return ok_reply({"profile": to_wire(future.result())})


def _merged(worker: Profile, children: concurrent.futures.Future[Profile]) -> Profile:
    """The worker's own profile with its sessions' processes' (those that answered)."""
    try:
        theirs = children.result(timeout=START_WAIT_S * 2)
    except Exception as exc:  # the worker's own profile stands; the reason goes with it
        return Profile(
            worker.stacks,
            worker.unit,
            worker.title,
            2,
            worker.sample_ms,
            {**worker.meta, "children_error": str(exc)},
        )
    stacks = dict(worker.stacks)
    for stack, weight in theirs.stacks.items():
        add(stacks, stack, weight)
    meta = {**worker.meta, **{k: theirs.meta[k] for k in ("children", "children_failed", "pids")}}
    return Profile(stacks, worker.unit, worker.title, 2, worker.sample_ms, meta)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
