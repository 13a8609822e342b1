"""Where workers' sockets live: one private folder per user, one `<pid>.sock` per worker."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from openrtc.errors import SocketError


def socket_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_RUNTIME_DIR/openrtc` when set, else `<tempdir>/openrtc-<uid>`. Not created here."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "openrtc"
    return Path(tempfile.gettempdir()) / f"openrtc-{os.getuid()}"


def check_private_dir(path: Path) -> None:
    """Refuse a folder that is a symlink, not a folder, owned by someone else, or open to others."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SocketError(f"socket folder {path} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise SocketError(
            f"socket folder {path} is a symlink; refusing it (remove it to let openrtc recreate it)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise SocketError(f"socket folder {path} is not a folder")
    if st.st_uid != os.getuid():
        raise SocketError(f"socket folder {path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})")
    if st.st_mode & 0o077:
        raise SocketError(
            f"socket folder {path} has mode {stat.S_IMODE(st.st_mode):o}; it must be 0700 (chmod 700 {path})"
        )


def ensure_private_dir(path: Path) -> Path:
    """Create the socket folder with mode 0700 when missing, then check it is private."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SocketError(f"cannot create socket folder {path}: {exc.strerror}") from exc
    check_private_dir(path)
    return path


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


def bind_worker_socket(path: Path) -> socket.socket:
    """Bind a listening socket at `path` (mode 0600); never take over a live worker's socket."""
    if path.exists() or path.is_symlink():
        if stat.S_ISSOCK(os.lstat(path).st_mode) and not is_alive(path):
            path.unlink()
        else:
            raise SocketError(f"{path} already exists and is in use; refusing to take it over")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # The folder is 0700, so the window before chmod exposes nothing to other users.
        os.chmod(path, 0o600)
        sock.listen(256)
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    return sock
