"""Hot reload: new sessions get new code, running ones keep the old, a broken save keeps the old."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from openrtc import AgentPool, SessionState, UnknownAgentError
from openrtc.runtime.reload import Reloader
from tests.conftest import write_agent


def versioned(version: int) -> str:
    return (
        "import asyncio\n"
        f"VERSION = {version}\n"
        "async def entrypoint(session):\n"
        "    session.metadata['version'] = VERSION\n"
        "    await asyncio.sleep(session.metadata.get('sleep', 0))\n"
        "    session.metadata['version_at_end'] = VERSION\n"
    )


def test_reload_swaps_code_for_new_sessions_only(
    agents_dir: Path, run_loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    write_agent(agents_dir, "talk", versioned(1))

    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:
            pool.discover(agents_dir)
            reloader = Reloader(pool, agents_dir)
            reloader.prime()
            old = await pool.start_session("talk", metadata={"sleep": 0.2})
            await asyncio.sleep(0.01)

            write_agent(agents_dir, "talk", versioned(2))
            await reloader.check()
            new = await pool.start_session("talk")
            await new
            assert new.session.metadata["version"] == 2
            await old
            assert old.session.metadata["version"] == 1 and old.session.metadata["version_at_end"] == 1

            write_agent(agents_dir, "talk", "import asyncio\nasync def entrypoint(session:\n")  # broken save
            await reloader.check()
            kept = await pool.start_session("talk")
            assert await kept is SessionState.ENDED and kept.session.metadata["version"] == 2

            write_agent(agents_dir, "extra", versioned(7))  # a new file is picked up
            await reloader.check()
            assert "extra" in pool.agent_names

            (agents_dir / "extra.py").unlink()  # a deleted file unregisters its agent
            await reloader.check()
            with pytest.raises(UnknownAgentError):
                await pool.start_session("extra")

    with caplog.at_level(logging.INFO, logger="openrtc.reload"):
        run_loop(main())
    broken = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(broken) == 1
    assert "keeping the previous version" in broken[0] and "talk.py:2: syntax error" in broken[0]


def test_failing_prewarm_keeps_the_old_version(agents_dir: Path, run_loop: Any) -> None:
    good = (
        "from openrtc import Agent\n"
        "class Talk(Agent):\n"
        "    name = 'talk'\n"
        "    @classmethod\n"
        "    async def prewarm(cls, shared):\n"
        "        shared['v'] = 1\n"
        "    async def run(self, session):\n"
        "        session.metadata['v'] = session.shared['v']\n"
    )
    write_agent(agents_dir, "talk", good)

    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:
            pool.discover(agents_dir)
            reloader = Reloader(pool, agents_dir)
            reloader.prime()
            write_agent(agents_dir, "talk", good.replace("shared['v'] = 1", "raise RuntimeError('no model')"))
            await reloader.check()
            handle = await pool.start_session("talk")
            await handle
            assert handle.session.metadata["v"] == 1

    run_loop(main())
