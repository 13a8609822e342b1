"""Stacks as text, and which frame to blame: the innermost one in the session's own code. Pure."""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import Any

import openrtc

_OPENRTC_DIR = os.path.dirname(os.path.abspath(openrtc.__file__)) + os.sep


@dataclass(frozen=True)
class FrameInfo:
    """One frame of a stack."""

    filename: str
    """Absolute path of the code's file."""
    lineno: int
    """Line being executed."""
    function: str
    """Function name."""

    def display(self, cwd: str | None = None) -> str:
        return f"{display_path(self.filename, cwd)}:{self.lineno} in {self.function}"


def walk(frame: FrameType | None, limit: int = 64) -> list[FrameInfo]:
    """The frames from the outermost to `frame` (innermost last), at most `limit` innermost ones."""
    out: list[FrameInfo] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        out.append(FrameInfo(code.co_filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back
    out.reverse()
    return out


def suspended_stack(coro: Any, limit: int = 64) -> list[FrameInfo]:
    """The frames of a suspended coroutine chain, outermost first (follows `cr_await`)."""
    out: list[FrameInfo] = []
    while coro is not None and len(out) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        out.append(FrameInfo(frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


def display_path(filename: str, cwd: str | None = None) -> str:
    """Relative to `cwd` when the file lies under it, else as given."""
    cwd = os.getcwd() if cwd is None else cwd
    prefix = cwd.rstrip(os.sep) + os.sep
    return filename[len(prefix) :] if filename.startswith(prefix) else filename


@lru_cache(maxsize=1)
def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return (*sorted(os.path.abspath(d) + os.sep for d in dirs), _OPENRTC_DIR)


def is_library(filename: str) -> bool:
    """Standard library, installed packages, openrtc itself, or code without a real file."""
    if filename.startswith("<"):
        return True
    return os.path.abspath(filename).startswith(_library_prefixes())


def pick_blame(stack: Sequence[FrameInfo], own_dirs: Iterable[str]) -> FrameInfo | None:
    """The innermost frame in one of `own_dirs`; else the innermost non-library frame; else the innermost."""
    prefixes = tuple(d.rstrip(os.sep) + os.sep for d in own_dirs)
    if prefixes:
        for frame in reversed(stack):
            if frame.filename.startswith(prefixes) and not frame.filename.startswith(_OPENRTC_DIR):
                return frame
    for frame in reversed(stack):
        if not is_library(frame.filename):
            return frame
    return stack[-1] if stack else None
