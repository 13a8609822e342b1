"""The socket folder is private or refused; a live worker's socket is never taken over."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from openrtc import AgentPool, SocketError
from openrtc.introspection.paths import (
    bind_worker_socket,
    check_private_dir,
    ensure_private_dir,
    remove_if_dead,
    socket_dir,
)


def test_socket_dir_prefers_xdg_runtime_dir(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    assert socket_dir({"XDG_RUNTIME_DIR": str(runtime)}) == runtime / "openrtc"
    assert socket_dir({}).name == f"openrtc-{os.getuid()}"


def test_an_unsafe_xdg_runtime_dir_falls_back_to_the_temporary_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In a parent others may write to without the sticky bit, our folder could be renamed away."""
    runtime = tmp_path / "open"
    runtime.mkdir()
    runtime.chmod(0o777)
    fallback = socket_dir({})
    assert socket_dir({"XDG_RUNTIME_DIR": str(runtime)}) == fallback
    assert "XDG_RUNTIME_DIR is not safe" in caplog.text and "mode 777" in caplog.text
    runtime.chmod(0o1777)  # sticky: others cannot rename what is not theirs
    assert socket_dir({"XDG_RUNTIME_DIR": str(runtime)}) == runtime / "openrtc"
    assert socket_dir({"XDG_RUNTIME_DIR": str(tmp_path / "missing")}) == fallback


def test_the_socket_is_removed_from_the_folder_it_was_made_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_loop: Any
) -> None:
    """Someone renames the worker's folder and puts another in its place: the worker removes its own
    socket (and ledger) from the renamed folder, and touches nothing in the new one."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))

    async def main() -> Path:
        async with AgentPool(drain_timeout_s=0) as pool:
            path = pool.socket_path
            assert path is not None and path.exists()
            (runtime / "openrtc").rename(runtime / "moved")
            ensure_private_dir(runtime / "openrtc")
            (runtime / "openrtc" / path.name).write_text("someone else's")
        return path

    path = run_loop(main())
    assert not list((runtime / "moved").iterdir())  # socket and ledger gone from where they were made
    assert (runtime / "openrtc" / path.name).read_text() == "someone else's"


def test_created_with_mode_0700(tmp_path: Path) -> None:
    folder = ensure_private_dir(tmp_path / "openrtc")
    assert folder.stat().st_mode & 0o777 == 0o700


def test_symlinked_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "openrtc"
    link.symlink_to(real)
    with pytest.raises(SocketError, match="symlink"):
        ensure_private_dir(link)


def test_open_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "openrtc"
    folder.mkdir()
    folder.chmod(0o755)
    with pytest.raises(SocketError, match="chmod 700"):
        check_private_dir(folder)


def test_foreign_owned_folder_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown a folder to another user")
    folder = tmp_path / "openrtc"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(SocketError, match="owned by uid 65534"):
        check_private_dir(folder)


def test_live_socket_is_not_taken_over_and_dead_one_is_reused(tmp_path: Path) -> None:
    path = ensure_private_dir(tmp_path / "d") / "1.sock"
    first = bind_worker_socket(path)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(SocketError, match="in use"):
        bind_worker_socket(path)
    assert not remove_if_dead(path)
    first.close()  # the file stays, as after a kill -9
    assert path.exists()
    second = bind_worker_socket(path)
    second.close()
    assert remove_if_dead(path) and not path.exists()


def test_a_client_cleaning_dead_sockets_cannot_remove_one_being_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between `bind` and `listen` a socket refuses connections: were it at its final name then, a
    `top` or `find_workers` cleaning dead sockets would remove it (seen once in a stress run:
    `cannot listen on ...: No such file or directory`). It takes its name only once it listens."""
    from openrtc.introspection import paths

    folder = ensure_private_dir(tmp_path / "d")
    path = folder / "3.sock"
    seen: list[bool] = []
    chmod = os.chmod

    def a_client_looks(where: Any, mode: int) -> None:  # runs between bind and listen
        seen.append(remove_if_dead(path))
        seen.extend(remove_if_dead(other) for other in folder.glob("*.sock"))
        chmod(where, mode)

    monkeypatch.setattr(paths.os, "chmod", a_client_looks)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        listener = bind_worker_socket(path, dir_fd)
    finally:
        os.close(dir_fd)
    with listener:
        assert seen == [False] and path.stat().st_mode & 0o777 == 0o600
        assert not remove_if_dead(path)
        assert [p.name for p in folder.iterdir()] == ["3.sock"]  # no temporary name left behind


def test_regular_file_in_the_way_is_not_removed(tmp_path: Path) -> None:
    path = ensure_private_dir(tmp_path / "d") / "1.sock"
    path.write_text("not a socket")
    with pytest.raises(SocketError):
        bind_worker_socket(path)
    assert path.read_text() == "not a socket"


def test_remove_if_dead_needs_a_refused_connect(tmp_path: Path) -> None:
    path = ensure_private_dir(tmp_path / "d") / "2.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    try:
        assert not remove_if_dead(path)
        assert path.exists()
    finally:
        listener.close()


def test_another_user_cannot_connect(tmp_path: Path) -> None:
    """A real second user (uid 65534, `nobody`) is refused by the folder's and the socket's modes."""
    import shutil
    import subprocess
    import sys

    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as a second user")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-I", "-c"]
    probe = subprocess.run(
        [*as_nobody, "print('ok')"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.stdout.strip() != "ok":
        pytest.skip(f"this interpreter cannot run as uid 65534 here: {probe.stderr.strip()[:200]}")
    home = tmp_path / "run"
    home.mkdir()
    home.chmod(0o755)  # the parent is open: only openrtc's own folder and socket modes protect it
    tmp_path.chmod(0o755)
    path = ensure_private_dir(home / "openrtc") / "1.sock"
    listener = bind_worker_socket(path)
    try:
        code = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"try:\n    s.connect({str(path)!r})\nexcept PermissionError:\n    print('refused')\n"
            "else:\n    print('CONNECTED')\n"
        )
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-I", "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.stdout.strip() == "refused", (out.stdout, out.stderr)
    finally:
        listener.close()
