"""Where workers' sockets live: one private folder per user, one `<pid>.sock` per worker.

The folder is `$XDG_RUNTIME_DIR/openrtc`, else `<tempdir>/openrtc-<uid>`. Its parent matters too: in a
folder that others may write to without the sticky bit, another user can rename ours away and put
their own in its place. Such a parent is not used: `$XDG_RUNTIME_DIR` falls back to the temporary
folder (sticky on every Unix), with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from openrtc._private import check_private_dir, ensure_private_dir
from openrtc.errors import SocketError

__all__ = [
    "bind_worker_socket",
    "check_private_dir",
    "ensure_private_dir",
    "is_alive",
    "remove_if_dead",
    "socket_dir",
]

log = logging.getLogger("openrtc.paths")
_warned: set[str] = set()


def parent_problem(path: Path) -> str | None:
    """Why the folder `path` must not hold our socket folder, or None when it is safe: it must be
    owned by you or root, and not writable by others unless sticky."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    if st.st_uid not in (0, os.getuid()):
        return f"{path} is owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):o}: others can rename what it holds"
    return None


def socket_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_RUNTIME_DIR/openrtc` when set and safe (see `parent_problem`), else
    `<tempdir>/openrtc-<uid>`. Not created here."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    fallback = Path(tempfile.gettempdir()) / f"openrtc-{os.getuid()}"
    if runtime:
        problem = parent_problem(Path(runtime))
        if problem is None:
            return Path(runtime) / "openrtc"
        if runtime not in _warned:
            _warned.add(runtime)
            log.warning("XDG_RUNTIME_DIR is not safe (%s); using %s instead", problem, fallback)
    problem = parent_problem(fallback.parent)
    if problem is not None:
        raise SocketError(
            f"no safe folder for worker sockets: {problem} (set XDG_RUNTIME_DIR to a private folder)"
        )
    return fallback


def is_alive(path: Path, timeout: float = 1.0) -> bool:
    """True when something accepts connections on the socket at `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # e.g. a full backlog or a timeout: someone is there, do not touch the socket
    finally:
        sock.close()
    return True


def remove_if_dead(path: Path) -> bool:
    """Remove the socket of a dead worker, only after a refused connect. True when removed."""
    if is_alive(path):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def bind_worker_socket(path: Path, dir_fd: int | None = None) -> socket.socket:
    """Bind a listening socket at `path` (mode 0600); never take over a live worker's socket.

    The socket is bound under a temporary name and renamed to `path` once it listens: a client that
    finds `path` can connect to it. (Bound at `path` directly, it would refuse connections until
    `listen`, and a client cleaning dead sockets in that window would remove it.)

    With `dir_fd` (the folder, held open), the socket is made in that very folder: on Linux through
    `/proc/self/fd`, so a folder renamed between its check and the bind cannot redirect it.
    """
    if path.exists() or path.is_symlink():
        if stat.S_ISSOCK(os.lstat(path).st_mode) and not is_alive(path):
            path.unlink()
        else:
            raise SocketError(f"{path} already exists and is in use; refusing to take it over")
    folder = str(path.parent)
    if dir_fd is not None and os.path.isdir(f"/proc/self/fd/{dir_fd}"):
        folder = f"/proc/self/fd/{dir_fd}"
    temporary = f"{folder}/.{path.name}.{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    step = "bind"
    try:
        sock.bind(temporary)
        # The folder is 0700, so the window before chmod exposes nothing to other users.
        step = "chmod"
        os.chmod(temporary, 0o600)
        step = "listen"
        sock.listen(256)
        step = "rename"
        os.rename(temporary, f"{folder}/{path.name}")
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise SocketError(f"cannot listen on {path} ({step}): {exc.strerror or exc}") from exc
    return sock
