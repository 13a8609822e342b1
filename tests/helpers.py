"""Helpers the tests import: writing an agent file, waiting for a condition."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path


def write_agent(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(source)
    # A reload compares mtimes: make each write visible even within one clock tick.
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp, stamp + 1_000_000))
    return path


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
