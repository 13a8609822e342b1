"""The live view's data against real workers: `LiveSource`, `--once` colour, and `openrtc top` in tmux."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from openrtc.introspection.paths import ensure_private_dir
from openrtc.introspection.wire import HEADER_SIZE, encode_frame
from openrtc.top.source import GONE_KEEP_S, LiveSource
from tests.cli.worker import OPENRTC, Worker, run_cli
from tests.helpers import write_agent

POLITE = """\
async def entrypoint(session):
    await session.draining.wait()
"""


def start_worker(agents: Path, home: Path, workers: list[Worker]) -> Worker:
    worker = Worker("start", agents, home)
    workers.append(worker)
    return worker.ready()


def wait_for(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        time.sleep(0.05)


def test_live_source_sees_workers_then_marks_a_dead_one_gone(
    agents_dir: Path, sock_home: Path, workers: list[Worker]
) -> None:
    write_agent(agents_dir, "polite", POLITE)
    first, second = start_worker(agents_dir, sock_home, workers), start_worker(agents_dir, sock_home, workers)
    (session,) = first.dispatch("polite").stdout.split()
    now = [0.0]
    source = LiveSource(clock=lambda: now[0])
    fetch = source.fetch()
    assert fetch.folder == sock_home / "openrtc"
    assert [v.socket_path for v in fetch.workers] == sorted([first.socket, second.socket])
    by_path = {v.socket_path: v for v in fetch.workers}
    assert not by_path[first.socket].gone and by_path[first.socket].error is None
    assert [r.session_id for r in by_path[first.socket].snapshot.sessions] == [session]  # type: ignore[union-attr]

    source.cancel(first.socket, session)
    wait_for(lambda: first.records() and bool(first.wait_for_log("cancelled_by_user")), what="cancel logged")

    second.proc.kill()  # no cleanup: its socket stays until someone finds it dead
    second.proc.wait()
    fetch = source.fetch()
    gone = {v.socket_path: v for v in fetch.workers}[second.socket]
    assert gone.gone and gone.snapshot is not None and gone.snapshot.worker.pid == second.proc.pid
    assert not second.socket.exists()  # removed after a refused connect
    now[0] += GONE_KEEP_S + 1
    assert [v.socket_path for v in source.fetch().workers] == [first.socket]


def test_live_source_names_both_schema_versions(sock_home: Path) -> None:
    folder = ensure_private_dir(sock_home / "openrtc")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "99999.sock"))
    listener.listen()

    def serve() -> None:  # a "worker" from the future: protocol 1, snapshot schema 2
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                header = conn.recv(HEADER_SIZE)
                if len(header) < HEADER_SIZE:
                    continue  # a liveness probe: connect, then close
                conn.recv(int.from_bytes(header, "big"))
                conn.sendall(encode_frame({"v": 1, "ok": True, "data": {"schema_version": 2}}))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        (view,) = LiveSource().fetch().workers
        assert view.snapshot is None and not view.gone
        assert view.error is not None and "schema version 2; this openrtc reads version 1" in view.error
    finally:
        listener.close()


def test_live_source_without_folder_is_empty_not_an_error(sock_home: Path) -> None:
    fetch = LiveSource().fetch()
    assert fetch.workers == () and fetch.folder == sock_home / "openrtc"


def _once_on_a_tty(env: dict[str, str]) -> str:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([OPENRTC, "top", "--once"], stdout=follower, stderr=subprocess.DEVNULL, env=env)
    os.close(follower)
    out = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(30) == 0
    return out.decode()


def test_once_colours_a_tty_unless_no_color(agents_dir: Path, sock_home: Path, workers: list[Worker]) -> None:
    write_agent(agents_dir, "polite", POLITE)
    worker = start_worker(agents_dir, sock_home, workers)
    worker.dispatch("polite")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(sock_home)}
    env.pop("NO_COLOR", None)
    coloured = _once_on_a_tty(env)
    assert "\x1b[1mworker " in coloured
    plain = _once_on_a_tty({**env, "NO_COLOR": "1"})
    assert "worker " in plain and "\x1b[" not in plain


# -- the real `openrtc top` in a real terminal ----------------------------------------------------------


class Tmux:
    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", name]

    def __call__(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=True).stdout

    def alive(self) -> bool:
        """True while the `top` pane's command runs (tmux closes the session when it exits)."""
        probe = subprocess.run([*self.base, "has-session", "-t", "top"], capture_output=True, check=False)
        return probe.returncode == 0

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def wait_for(self, text: str | Callable[[str], bool], timeout: float = 20.0) -> str:
        """The screen once it shows `text` (or satisfies it): frames land part by part, so wait."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text(screen) if callable(text) else text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen after {timeout}s:\n{screen}")
            time.sleep(0.1)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_top_in_tmux_against_a_real_worker(agents_dir: Path, sock_home: Path, workers: list[Worker]) -> None:
    write_agent(agents_dir, "polite", POLITE)
    worker = start_worker(agents_dir, sock_home, workers)
    ids = worker.dispatch("polite", "--count", "3", "--tenant", "acme").stdout.split()
    tmux = Tmux(f"openrtc-test-{os.getpid()}")
    command = f"env XDG_RUNTIME_DIR={sock_home} {OPENRTC} top --refresh 0.3"
    tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "30", command)
    tmux("resize-window", "-t", "top", "-x", "160", "-y", "30")
    try:
        screen = tmux.wait_for(lambda s: all(i[:8] in s for i in ids) and "3 of 3 sessions" in s)
        assert f"worker {socket.gethostname()}:{worker.proc.pid}" in screen
        tmux("send-keys", "-t", "top", "/", *ids[1][:6], "Enter")
        tmux.wait_for(lambda s: "1 of 3 sessions" in s and ids[1][:8] in s and ids[0][:8] not in s)
        tmux("send-keys", "-t", "top", "k")
        tmux.wait_for("Cancel session")
        tmux("send-keys", "-t", "top", "y")
        worker.wait_for_log("cancelled_by_user")
        tmux("send-keys", "-t", "top", "Escape", "x")  # clear the search: the cancelled one shows as such
        tmux.wait_for("cancelled")
        worker.stop(signal.SIGKILL)
        tmux.wait_for("GONE")
        tmux("send-keys", "-t", "top", "q")
        wait_for(lambda: not tmux.alive(), what="top quit")
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True, check=False)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_demo_opens_top_and_quitting_stops_everything(sock_home: Path, tmp_path: Path) -> None:
    tmux = Tmux(f"openrtc-demo-{os.getpid()}")
    out = tmp_path / "demo.out"
    command = f"env XDG_RUNTIME_DIR={sock_home} {OPENRTC} demo --rate 20 > /dev/tty; echo exit=$? > {out}"
    tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "40", command)
    tmux("resize-window", "-t", "top", "-x", "160", "-y", "40")
    try:
        screen = tmux.wait_for("running", timeout=30)
        assert "worker " in screen and " sessions " in screen
        worker_pid = int(screen.split("worker ")[1].split()[0].split(":")[1])
        family = [worker_pid, *(p.pid for p in psutil.Process(worker_pid).children(recursive=True))]
        tmux.wait_for("blocking.py:14 in lookup_customer", timeout=30)  # the culprit, named
        tmux("send-keys", "-t", "top", "q")
        wait_for(lambda: out.exists() and out.read_text().strip() == "exit=0", timeout=30, what="demo exit 0")
        assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie" for pid in family)
        assert not list((sock_home / "openrtc").glob("*.sock"))
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True, check=False)


def test_once_prints_the_first_rows_the_worker_selects_and_says_how_many_more(
    agents_dir: Path, sock_home: Path, workers: list[Worker]
) -> None:
    write_agent(agents_dir, "polite", POLITE)
    worker = start_worker(agents_dir, sock_home, workers)
    assert worker.dispatch("polite", "--count", "5").returncode == 0

    def once(*flags: str) -> subprocess.CompletedProcess[str]:
        out = run_cli("top", "--once", *flags, env=worker.env)
        assert out.returncode == 0, out.stderr
        return out

    table = once("--limit", "2").stdout
    assert sum(" polite " in line for line in table.splitlines()) == 2
    assert "(2 of 5 sessions, the first by cpu)" in table
    assert "of 5 sessions" not in once().stdout  # 100 by default: all five, no footer
    whole = json.loads(once("--json").stdout)
    assert whole["selection"] is None and len(whole["sessions"]) == 5
    some = json.loads(once("--json", "--limit", "3", "--sort", "age").stdout)
    assert len(some["sessions"]) == 3
    assert some["selection"]["matched"] == 5 and some["selection"]["sort"] == "age"
    bad = run_cli("top", "--limit", "3", env=worker.env)
    assert bad.returncode == 2 and "--limit needs --once" in bad.stderr
