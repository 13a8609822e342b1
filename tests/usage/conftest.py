"""Fixtures of the usage tests: the simulated LLM the real SDKs talk to, and a pool whose sessions'
events land in an event log the test reads back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openrtc import AgentPool, Session, UsageConfig
from openrtc.cli.llmsim import SimulatedLLM
from openrtc.usage.reader import Event, Problems, log_files, read_events


@pytest.fixture(scope="module")
def llm() -> Iterator[SimulatedLLM]:
    with SimulatedLLM() as server:
        yield server


def read_log(folder: Path) -> list[Event]:
    problems = Problems()
    events = [e for path in log_files(folder) for e in read_events(path, problems)]
    assert not problems.warnings, problems.warnings
    return events


def run_session(
    agent: Callable[[Session], Awaitable[None]],
    log_dir: Path,
    metadata: dict[str, Any] | None = None,
    **config: Any,
) -> list[Event]:
    """One session of `agent` in a pool writing to `log_dir`; the events of that session, in order."""

    async def main() -> str:
        async with AgentPool(
            enable_introspection=False, usage=UsageConfig(log_dir=log_dir, **config)
        ) as pool:
            pool.add("agent", agent)
            handle = await pool.start_session("agent", tenant="acme", metadata=metadata or {})
            await handle
            return handle.id

    session_id = asyncio.run(main())
    return [e for e in read_log(log_dir) if e.session_id == session_id]


def calls(events: list[Event]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == "llm.call"]
