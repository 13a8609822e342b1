"""The template process of `isolation="process"`: imports the agents and runs their `prewarm` once,
then forks one child per session.

The worker starts it with `python -m openrtc.runtime.runners.template FD` (a fresh interpreter, so no
thread of the worker is ever forked) and talks to it over FD, a SOCK_SEQPACKET socket: one msgpack map
per message (`openrtc._framing.pack`). The template is single-threaded, so forking it is safe, and
each child starts with the agents imported and prewarmed. A child gets its own stream socket to the
worker (passed with SCM_RIGHTS) for its log records, its end state, and the worker's `drain`/`cancel`,
in length-prefixed frames (`openrtc._framing.encode_frame`).

On a session's channel, the worker may also `ask` {rid, what, payload} a question that a plug-in's
`child_setup` registered an answer for (`runners.answers`); the child replies `answer` {rid, answer} or
{rid, error}.

Messages, worker -> template: `load` {agents: [{name, source | origin}]}, `start` {id, agent, tenant,
metadata, log_level}. Template -> worker: `loaded` {errors: {name: message}}, `started` {id, pid} with
the session's socket, `start_failed` {id, message}, `exit` {id, pid, status} (exit code, or -signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Awaitable
from typing import Any, NoReturn

from openrtc._framing import FrameDecoder, encode_frame, pack, unpack
from openrtc.errors import error_summary
from openrtc.runtime.agent import AgentSpec, make_spec
from openrtc.runtime.discovery import load_agent_file
from openrtc.runtime.runners.answers import answers
from openrtc.runtime.session import Session, SessionState

CONTROL_MAX = 1 << 20
"""Largest control message (a `start` with its metadata)."""
MAX_CHANNEL_FRAME = 256 << 20
"""Largest frame on a session's channel (a log record with a long traceback fits well within it)."""
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans); a no-op elsewhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _resolve(origin: str) -> Any:
    """The object at `module:qualname`."""
    module_name, _, qualname = origin.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load_spec(entry: dict[str, Any]) -> AgentSpec:
    """An agent from its file (`source`) or an importable `module:qualname` (`origin`)."""
    if entry.get("source"):
        return load_agent_file(entry["source"])
    return make_spec(entry["name"], _resolve(str(entry["origin"])))


class Template:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.specs: dict[str, AgentSpec] = {}
        self.shared: dict[str, dict[str, Any]] = {}
        self.children: dict[int, str] = {}
        """pid -> session id of every child not reaped yet."""

    def serve(self) -> None:
        reaper_r, reaper_w = os.pipe()
        os.set_blocking(reaper_w, False)
        signal.set_wakeup_fd(reaper_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, "control")
        selector.register(reaper_r, selectors.EVENT_READ, "reaper")
        try:
            while True:
                for key, _ in selector.select(timeout=1.0):
                    if key.data == "reaper":
                        os.read(reaper_r, 4096)
                    elif not self._on_control():
                        return
                self._reap()
        finally:
            for pid in list(self.children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _on_control(self) -> bool:
        try:
            data = self.control.recv(CONTROL_MAX)
        except InterruptedError:
            return True
        if not data:
            return False  # the worker is gone: take the children down with us (see `serve`)
        message = unpack(data)
        if message["op"] == "load":
            self._load(message["agents"])
        elif message["op"] == "start":
            self._start(message)
        return True

    def _load(self, agents: list[dict[str, Any]]) -> None:
        errors: dict[str, str] = {}
        for entry in agents:
            try:
                spec = load_spec(entry)
                shared: dict[str, Any] = {}
                if spec.prewarm is not None:
                    asyncio.run(_awaited(spec.prewarm(shared)))
            except BaseException as exc:
                errors[entry["name"]] = f"{type(exc).__name__}: {exc}"
                continue
            self.specs[entry["name"]] = spec
            self.shared[entry["name"]] = shared
        self.control.send(pack({"op": "loaded", "errors": errors}))

    def _start(self, message: dict[str, Any]) -> None:
        spec = self.specs.get(message["agent"])
        if spec is None:
            self.control.send(
                pack({"op": "start_failed", "id": message["id"], "message": "agent not loaded"})
            )
            return
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the session's process
            mine.close()
            self.control.close()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            run_child(theirs, spec, self.shared[spec.name], message)
        theirs.close()
        self.children[pid] = message["id"]
        socket.send_fds(
            self.control, [pack({"op": "started", "id": message["id"], "pid": pid})], [mine.fileno()]
        )
        mine.close()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            session_id = self.children.pop(pid, None)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            self.control.send(pack({"op": "exit", "id": session_id, "pid": pid, "status": code}))


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable


class _SessionExit(Exception):
    """`sys.exit()` in the session's code: asyncio would let SystemExit stop the whole loop."""


async def _session_code(awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except SystemExit as exc:
        raise _SessionExit(f"SystemExit: {exc.code}") from None


# -- the session's process --------------------------------------------------------------------------


class ChannelHandler(logging.Handler):
    """Sends each log record to the worker, which logs it again with the session's id."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self._send({"op": "log", "name": record.name, "level": record.levelno, "message": text})
        except Exception:
            self.handleError(record)


def run_child(
    channel: socket.socket, spec: AgentSpec, shared: dict[str, Any], start: dict[str, Any]
) -> NoReturn:
    """Run one session in this (forked) process and leave with `os._exit`: never return to the template."""
    code = 70
    try:
        die_with_parent()
        code = asyncio.run(_child_session(channel, spec, shared, start))
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


async def _child_session(
    channel: socket.socket, spec: AgentSpec, shared: dict[str, Any], start: dict[str, Any]
) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=channel)

    def send(frame: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(encode_frame(frame))

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(ChannelHandler(send))
    root.setLevel(int(start.get("log_level", logging.INFO)))

    draining = asyncio.Event()
    session = Session(
        start["id"],
        spec.name,
        start.get("tenant"),
        start.get("metadata") or {},
        shared,
        draining,
        int(start.get("attempt") or 1),
    )
    session.state = SessionState.RUNNING
    session._emit = lambda _, kind, data: send({"op": "event", "type": kind, "data": data})
    for path, kwargs in start.get("setups") or ():
        try:  # a plug-in's own part in this process (`Hook.child_setup`)
            _resolve(str(path))(session, **(kwargs or {}))
        except Exception:
            logging.getLogger("openrtc.process").exception("child setup %s failed", path)
    task: asyncio.Task[None] = asyncio.create_task(_session_code(spec.entry(session)))
    cancel_reason: list[str] = []

    async def follow_worker() -> None:
        decoder = FrameDecoder(MAX_CHANNEL_FRAME)
        while data := await reader.read(65536):
            for frame in decoder.feed(data):
                if not isinstance(frame, dict):
                    continue
                if frame.get("op") == "drain":
                    draining.set()
                elif frame.get("op") == "cancel":
                    cancel_reason.append(str(frame.get("reason", "cancelled")))
                    task.cancel(msg=cancel_reason[-1])
                elif frame.get("op") == "ask":
                    answering.add(asyncio.create_task(reply(frame), name="openrtc-ask"))
        cancel_reason.append("worker_gone")
        task.cancel(msg="worker_gone")

    answering: set[asyncio.Task[None]] = set()

    async def reply(frame: dict[str, Any]) -> None:
        rid, what = frame.get("rid"), frame.get("what")
        fn = answers.get(str(what))
        try:
            if fn is None:
                raise LookupError(f"nothing in the session's process answers {what!r}")
            payload = frame.get("payload")
            send(
                {
                    "op": "answer",
                    "rid": rid,
                    "answer": await fn(session, payload if isinstance(payload, dict) else {}),
                }
            )
        except Exception as exc:
            send({"op": "answer", "rid": rid, "error": error_summary(exc)})
        finally:
            this = asyncio.current_task()
            if this is not None:
                answering.discard(this)

    # Named: the tasks of openrtc's own in this process are not the session's (`openrtc-` prefix).
    follower = asyncio.create_task(follow_worker(), name="openrtc-channel")
    send({"op": "running", "pid": os.getpid()})
    done: dict[str, Any] = {"op": "done", "state": "ended", "reason": None, "error": None, "summary": None}
    try:
        await task
    except asyncio.CancelledError:
        done.update(state="cancelled", reason=cancel_reason[0] if cancel_reason else "cancelled")
    except _SessionExit as exc:
        done.update(state="failed", reason="sys_exit", error=str(exc), summary=str(exc))
    except Exception as exc:
        done.update(
            state="failed",
            reason="exception",
            error="".join(traceback.format_exception(exc)).rstrip(),
            summary=error_summary(exc),
        )
    follower.cancel()
    send(done)
    await writer.drain()
    writer.close()
    return 0


def main(argv: list[str]) -> int:
    die_with_parent()
    control = socket.socket(fileno=int(argv[1]))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    Template(control).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
