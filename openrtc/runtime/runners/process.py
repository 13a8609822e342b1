"""The worker's side of `isolation="process"`: the template process, and one child per session.

`ProcessRunner` is the pool's runner for this isolation. `TemplateClient` starts the template
(`openrtc.runtime.runners.template`) and asks it for children; `run_in_child` is what a process
session's root task runs: it relays the child's log records, forwards drain and cancel, and turns the
child's end (or its death) into the session's state. `ChildWatch` reads each child's RSS and CPU from
the OS and enforces the per-session memory limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from openrtc._framing import FrameDecoder, encode_frame, pack, unpack
from openrtc.errors import AgentLoadError, OpenRTCError, SessionRefused
from openrtc.runtime.agent import AgentSpec
from openrtc.runtime.runners.template import CONTROL_MAX, MAX_CHANNEL_FRAME
from openrtc.runtime.session import Session, SessionFailed, SessionState

log = logging.getLogger("openrtc.process")

STOP_GRACE_S = 2.0
"""After a cancel, how long a child has to unwind before SIGTERM, then again before SIGKILL."""
EXIT_WAIT_S = 5.0
"""How long to wait for the template to report a child's exit status."""
FULL_POLL_S = 1.0
"""How often every child's RSS and CPU are read."""
FAST_POLL_S = 0.05
"""The shortest time between two RSS reads of a child near its memory limit."""
ASSUMED_GROWTH_MB_S = 400.0
"""The growth rate a child's RSS reads are paced for (see `ChildWatch`)."""


@dataclass
class ProcessStats:
    """What the OS says about one session's process (written by `ChildWatch` on the loop)."""

    pid: int
    rss_mb: float = 0.0
    peak_mb: float = 0.0
    cpu_s: float = 0.0
    samples: collections.deque[tuple[float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=64)
    )
    """(perf_counter, cpu_s) once a second: the snapshot's CPU% window."""
    warned: bool = False
    handle: psutil.Process | None = None
    next_check: float = 0.0
    """When its RSS is read next (sooner near the memory limit)."""

    def cpu_pct(self, window_s: float, now: float) -> float:
        """The child's CPU over the last `window_s`, as % of one core."""
        old = next(((t, c) for t, c in self.samples if now - t <= window_s), None)
        if old is None or now - old[0] <= 0:
            return 0.0
        return max(0.0, (self.cpu_s - old[1]) / (now - old[0]) * 100)


def agent_entry(spec: AgentSpec, origin: str | None) -> dict[str, Any]:
    """How the template finds an agent: its file, else an importable `module:qualname`."""
    if spec.source:
        return {"name": spec.name, "source": spec.source}
    if origin:
        return {"name": spec.name, "origin": origin}
    raise OpenRTCError(
        f"agent {spec.name!r} cannot run with isolation='process': the child process must import it, so "
        "define it in an agent file (pool.discover) or at module level of an importable module"
    )


class TemplateClient:
    """One template process per pool; children are started through it and reported back by it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "openrtc.runtime.runners.template", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            close_fds=True,
        )
        theirs.close()
        self._sock.setblocking(False)
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._loaded: asyncio.Future[dict[str, str]] | None = None
        self._load_lock = asyncio.Lock()
        loop.add_reader(self._sock.fileno(), self._on_readable)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def load(self, agents: list[dict[str, Any]]) -> dict[str, str]:
        """Import and prewarm these agents in the template; returns the errors by agent name."""
        async with self._load_lock:  # one load in flight: the template answers them in order
            self._loaded = self._loop.create_future()
            self._sock.send(pack({"op": "load", "agents": agents}))
            return await self._loaded

    async def spawn(
        self, session: Session, log_level: int, setups: list[tuple[str, dict[str, Any]]]
    ) -> tuple[int, socket.socket]:
        """A child running `session`: its pid and the worker's end of its socket."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._waiting[session.id] = future
        message = {
            "op": "start",
            "id": session.id,
            "agent": session.agent,
            "tenant": session.tenant,
            "metadata": session.metadata,
            "attempt": session.attempt,
            "log_level": log_level,
            "setups": [[path, kwargs] for path, kwargs in setups],
        }
        try:
            self._sock.send(pack(message))
            result: tuple[int, socket.socket] = await future
        finally:
            self._waiting.pop(session.id, None)
        self._exits.setdefault(result[0], self._loop.create_future())
        return result

    def exit_status(self, pid: int) -> asyncio.Future[int]:
        return self._exits.setdefault(pid, self._loop.create_future())

    def _on_readable(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, CONTROL_MAX, 1)
            except BlockingIOError:
                return
            except OSError as exc:
                self._gone(f"template socket failed: {exc}")
                return
            if not data:
                self._gone("the template process exited")
                return
            message = unpack(data)
            op = message.get("op")
            if op == "loaded" and self._loaded is not None and not self._loaded.done():
                self._loaded.set_result(message["errors"])
            elif op == "started":
                channel = socket.socket(fileno=fds[0])
                future = self._waiting.get(message["id"])
                if future is not None and not future.done():
                    future.set_result((message["pid"], channel))
                else:
                    channel.close()
            elif op == "start_failed":
                future = self._waiting.get(message["id"])
                if future is not None and not future.done():
                    future.set_exception(
                        OpenRTCError(f"template could not start the session: {message['message']}")
                    )
            elif op == "exit":
                exit_future = self._exits.setdefault(message["pid"], self._loop.create_future())
                if not exit_future.done():
                    exit_future.set_result(int(message["status"]))

    def _gone(self, why: str) -> None:
        self._loop.remove_reader(self._sock.fileno())
        error = OpenRTCError(why)
        for future in [*self._waiting.values(), self._loaded]:
            if future is not None and not future.done():
                future.set_exception(error)
        log.error("%s", why)

    async def close(self) -> None:
        """Stop the template; it takes any child still alive down with it."""
        if self._sock.fileno() >= 0:
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._proc.wait), 5.0)
        except TimeoutError:
            self._proc.kill()
            await asyncio.to_thread(self._proc.wait)
        for future in self._exits.values():
            if not future.done():
                future.cancel()


def _describe_exit(status: int) -> tuple[str, str]:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return "signal", f"the session's process died by {name}"
    return "exit_code", f"the session's process exited with status {status}"


async def run_in_child(
    template: TemplateClient,
    session: Session,
    log_level: int,
    setups: list[tuple[str, dict[str, Any]]] | None = None,
) -> None:
    """The root task of a process session: returns when it ended, raises `SessionFailed` or is cancelled."""
    pid, channel = await template.spawn(session, log_level, setups or [])
    session.pid = pid
    session.process = ProcessStats(pid)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    session.child = ChildLink(writer)
    done: dict[str, Any] | None = None

    async def forward_drain() -> None:
        await session.draining.wait()
        if not writer.is_closing():
            writer.write(encode_frame({"op": "drain"}))

    drainer = asyncio.create_task(forward_drain())
    try:
        decoder = FrameDecoder(MAX_CHANNEL_FRAME)
        while data := await reader.read(65536):
            for frame in decoder.feed(data):
                if isinstance(frame, dict):
                    done = _on_frame(session, frame) or done
    except asyncio.CancelledError:
        await _stop_child(session, writer, reader, template)
        raise
    finally:
        drainer.cancel()
        session.child.close()
        writer.close()
    status = await _exit_status(template, pid)
    if done is None:
        if session.reason == "memory_limit":
            raise SessionFailed(
                "memory_limit", "the session's process went above memory_limit_mb and was killed"
            )
        if status == 0:
            raise SessionFailed("exit_code", "the session's process exited without reporting an end")
        raise SessionFailed(*_describe_exit(status))
    if done["state"] == "failed":
        summary = done.get("summary")
        raise SessionFailed(
            str(done.get("reason") or "exception"),
            str(done.get("error") or "failed"),
            summary if isinstance(summary, str) else None,
        )
    if done["state"] == "cancelled":
        session._cancel_reason = session._cancel_reason or str(done.get("reason") or "cancelled")
        raise asyncio.CancelledError(session._cancel_reason)


def _on_frame(session: Session, frame: dict[str, Any]) -> dict[str, Any] | None:
    op = frame.get("op")
    if op == "log":
        logging.getLogger(str(frame.get("name") or "openrtc.agent")).log(
            int(frame.get("level", logging.INFO)),
            "%s",
            frame.get("message", ""),
            extra={"session_id": session.id, "agent": session.agent},
        )
    elif op == "running":
        if session.state is SessionState.STARTING:
            session.state = SessionState.RUNNING
        session.running_at = time.perf_counter()
    elif op == "event":
        kind, data = frame.get("type"), frame.get("data")
        if isinstance(kind, str) and isinstance(data, dict):
            session.emit(kind, data)
    elif op == "answer" and session.child is not None:
        session.child.answered(frame)
    elif op == "done":
        return frame
    return None


class ChildLink:
    """Questions to a session's own process (loop thread only), answered there by what a plug-in
    registered (`runners.answers.answer`)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    def ask(self, what: str, payload: dict[str, Any]) -> asyncio.Future[Any]:
        """A future of the answer; it fails with `ChildError` when the child answered with an error,
        and is cancelled when the session's process goes away first."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._writer.is_closing():
            future.set_exception(ChildError(f"the session's process is gone; cannot ask {what!r}"))
            return future
        self._next += 1
        self._waiting[self._next] = future
        self._writer.write(encode_frame({"op": "ask", "rid": self._next, "what": what, "payload": payload}))
        return future

    def answered(self, frame: dict[str, Any]) -> None:
        future = self._waiting.pop(frame.get("rid"), None)  # type: ignore[arg-type]
        if future is None or future.done():
            return
        if "error" in frame:
            future.set_exception(ChildError(str(frame["error"])))
        else:
            future.set_result(frame.get("answer"))

    def close(self) -> None:
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()


class ChildError(OpenRTCError):
    """A session's process answered a question with an error (the message is its summary)."""


async def _exit_status(template: TemplateClient, pid: int) -> int:
    try:
        return await asyncio.wait_for(asyncio.shield(template.exit_status(pid)), EXIT_WAIT_S)
    except (TimeoutError, asyncio.CancelledError):
        return 0


async def _stop_child(
    session: Session, writer: asyncio.StreamWriter, reader: asyncio.StreamReader, template: TemplateClient
) -> None:
    """Cancel, then SIGTERM, then SIGKILL: each after `STOP_GRACE_S` without an exit."""
    reason = session._cancel_reason or "cancelled"
    if not writer.is_closing():
        writer.write(encode_frame({"op": "cancel", "reason": reason}))
    exited = template.exit_status(session.pid or 0)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and session.pid:
            try:
                os.kill(session.pid, sig)
            except ProcessLookupError:
                return
            session.log.warning("session process %d did not stop; sent %s", session.pid, sig.name)
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_GRACE_S)
            return
        except TimeoutError:
            continue


class ChildWatch:
    """Reads every child's RSS and CPU once a second; kills a child above the per-session limit.

    With a memory limit, a child's RSS is also read sooner the closer it is to the limit: after
    (its headroom / `ASSUMED_GROWTH_MB_S`), at least every `FAST_POLL_S`. A child growing slower than
    that is caught before it passes the limit (give or take one fast poll); a faster one overshoots by
    what it outgrows the assumption (`tests/runtime/test_process.py`: a child growing at 200 MB/s is
    killed within a chunk or two of a 150 MB limit).
    """

    def __init__(self, sessions: Any, warn_mb: float | None, limit_mb: float | None) -> None:
        self._sessions = sessions
        self._warn_mb = warn_mb
        self._limit_mb = limit_mb

    async def run(self) -> None:
        next_full = 0.0
        while True:
            now = time.perf_counter()
            if now >= next_full:
                soonest = self.tick(now)
                next_full = now + FULL_POLL_S
            else:
                soonest = self._poll_due(now)
            if self._limit_mb is not None:  # a new child is due at once: look for one often
                soonest = min(soonest, now + FAST_POLL_S)
            await asyncio.sleep(max(0.0, min(next_full, soonest) - time.perf_counter()))

    def _next_check(self, now: float, rss_mb: float) -> float:
        if self._limit_mb is None:
            return now + FULL_POLL_S
        headroom = max(0.0, self._limit_mb - rss_mb)
        return now + min(FULL_POLL_S, max(FAST_POLL_S, headroom / ASSUMED_GROWTH_MB_S))

    def _poll_due(self, now: float) -> float:
        """Read the RSS of the children due for it; returns when the next one is due."""
        soonest = now + FULL_POLL_S
        for session in list(self._sessions()):
            child: ProcessStats | None = session.process
            if child is None or session.state.finished:
                continue
            if child.next_check <= now:
                try:
                    process = child.handle = child.handle or psutil.Process(child.pid)
                    rss = process.memory_info().rss / (1024 * 1024)
                except psutil.Error:
                    continue
                child.rss_mb, child.peak_mb = rss, max(child.peak_mb, rss)
                child.next_check = self._next_check(now, rss)
                self._check(session, child)
            soonest = min(soonest, child.next_check)
        return soonest

    def tick(self, now: float) -> float:
        """Read every child's RSS and CPU; returns when the next RSS read is due."""
        soonest = now + FULL_POLL_S
        for session in list(self._sessions()):
            child: ProcessStats | None = session.process
            if child is None or session.state.finished:
                continue
            try:
                process = child.handle = child.handle or psutil.Process(child.pid)
                with process.oneshot():
                    rss = process.memory_info().rss / (1024 * 1024)
                    times = process.cpu_times()
            except psutil.Error:
                continue
            child.rss_mb, child.peak_mb = rss, max(child.peak_mb, rss)
            child.cpu_s = times.user + times.system
            child.samples.append((now, child.cpu_s))
            child.next_check = self._next_check(now, rss)
            soonest = min(soonest, child.next_check)
            self._check(session, child)
        return soonest

    def _check(self, session: Session, child: ProcessStats) -> None:
        if self._warn_mb is not None:
            if child.rss_mb > self._warn_mb and not child.warned:
                child.warned = True
                session.log.warning(
                    "memory: session process %d RSS %.0f MB crossed memory_warn_mb=%g",
                    child.pid,
                    child.rss_mb,
                    self._warn_mb,
                )
            elif child.rss_mb <= self._warn_mb and child.warned:
                child.warned = False
        if self._limit_mb is not None and child.rss_mb > self._limit_mb and session.reason != "memory_limit":
            session.reason = "memory_limit"
            session._cancel_reason = "memory_limit"
            session.log.error(
                "memory: session process %d RSS %.0f MB is above memory_limit_mb=%g; terminating it",
                child.pid,
                child.rss_mb,
                self._limit_mb,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)


class ProcessRunner:
    """`isolation="process"`: a template process imports and prewarms the agents; each session runs
    in a child forked from it."""

    isolation = "process"
    per_session_memory = True

    def __init__(
        self,
        memory_warn_mb: float | None,
        memory_limit_mb: float | None,
        child_setups: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> None:
        self._warn_mb = memory_warn_mb
        self._limit_mb = memory_limit_mb
        self._child_setups = list(child_setups)
        """`module:function`s each child runs first (the hooks' `child_setup`)."""
        self._template: TemplateClient | None = None
        self._watch: asyncio.Task[None] | None = None
        self._sessions: dict[str, Session] = {}
        self._errors: dict[str, str] = {}
        """Agents the template could not load, with why."""
        self._loaded: set[str] = set()

    async def start(
        self, loop: asyncio.AbstractEventLoop, agents: list[tuple[AgentSpec, str | None]]
    ) -> None:
        self._template = TemplateClient(loop)
        await self._load([agent_entry(spec, origin) for spec, origin in agents])
        watch = ChildWatch(lambda: list(self._sessions.values()), self._warn_mb, self._limit_mb)
        self._watch = loop.create_task(watch.run(), name="openrtc-child-watch")
        log.info("template process %d ready (isolation=process)", self._template.pid)

    async def _load(self, entries: list[dict[str, Any]]) -> dict[str, str]:
        assert self._template is not None
        errors = await self._template.load(entries)
        for entry in entries:
            name = entry["name"]
            if name in errors:
                self._errors[name] = errors[name]
                self._loaded.discard(name)
                log.error("agent %r not available in process mode: %s", name, errors[name])
            else:
                self._errors.pop(name, None)
                self._loaded.add(name)
        return errors

    async def prewarm(self, spec: AgentSpec, origin: str | None) -> dict[str, Any]:
        if spec.name not in self._loaded and spec.name not in self._errors:
            try:  # added after start: load it now
                entry = agent_entry(spec, origin)
            except OpenRTCError as exc:
                raise SessionRefused("prewarm_failed", str(exc)) from None
            await self._load([entry])
        error = self._errors.get(spec.name)
        if error is not None:
            raise SessionRefused("prewarm_failed", f"agent {spec.name!r} failed in the template: {error}")
        return {}  # the prewarmed dict lives in the template, and each child gets its copy

    async def reload(self, spec: AgentSpec, origin: str | None) -> dict[str, Any]:
        errors = await self._load([agent_entry(spec, origin)])
        if spec.name in errors:
            raise AgentLoadError(
                spec.source or spec.name, 0, f"failed in the template process: {errors[spec.name]}"
            )
        return {}

    async def run(self, session: Session, spec: AgentSpec) -> None:
        assert self._template is not None
        self._sessions[session.id] = session
        try:
            level = logging.getLogger().getEffectiveLevel()
            await run_in_child(self._template, session, level, self._child_setups)
        finally:
            self._sessions.pop(session.id, None)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._template is not None:
            await self._template.close()
            self._template = None
