"""Private folders: owned by the user, mode 0700, never a symlink. Below the socket folder and the
event log's folder alike."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from openrtc.errors import SocketError


def check_private_dir(path: Path, what: str = "socket folder", error: type[Exception] = SocketError) -> None:
    """Refuse a folder that is a symlink, not a folder, owned by someone else, or open to others."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise error(f"{what} {path} is a symlink; refusing it (remove it to let openrtc recreate it)")
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is not a folder")
    if st.st_uid != os.getuid():
        raise error(f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})")
    if st.st_mode & 0o077:
        raise error(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):o}; it must be 0700 (chmod 700 {path})"
        )


def ensure_private_dir(path: Path, what: str = "socket folder", error: type[Exception] = SocketError) -> Path:
    """Create the folder with mode 0700 when missing (its parents too), then check it is private."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise error(f"cannot create {what} {path}: {exc.strerror}") from exc
    check_private_dir(path, what, error)
    return path
