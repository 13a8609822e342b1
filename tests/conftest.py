"""Shared fixtures: a fresh event loop of each kind, and a private socket folder per test (helpers that
tests import are in `tests/helpers.py`)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from openrtc.introspection import timing
from openrtc.runtime.loops import loop_factory
from tests.cli.worker import Worker

T = TypeVar("T")
LOOP_KINDS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run_loop(loop_kind: str) -> Callable[[Any], Any]:
    """Run a coroutine to completion on a new loop of the parametrised kind."""

    def run(coro: Any) -> Any:
        with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
            return runner.run(coro)

    return run


@pytest.fixture
def step_timer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> timing.StepTimer:
    """The step timer ("c" or "python", parametrised indirectly; else the active one) of the pools and
    monitors this test makes."""
    name = getattr(request, "param", timing.ACTIVE.name)
    timer = timing.PYTHON if name == "python" else timing.NATIVE
    assert timer is not None, "the C step timer was not built"
    monkeypatch.setattr(timing, "ACTIVE", timer)
    return timer


@pytest.fixture
def sock_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR (AF_UNIX paths are limited to 107 bytes)."""
    home = Path(tempfile.mkdtemp(prefix="ortc-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Real worker processes a test starts; killed at the end, whatever happened."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "agents"
    folder.mkdir()
    return folder
