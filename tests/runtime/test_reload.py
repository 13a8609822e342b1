"""Hot reload: new sessions get new code, running ones keep the old, a broken save keeps the old."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from openrtc import AgentPool, SessionState, UnknownAgentError
from openrtc.runtime.reload import Reloader
from tests.helpers import write_agent


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


HELPER_AGENT = (
    "from _helpers import value\nasync def entrypoint(session):\n    session.metadata['value'] = value()\n"
)
UNRELATED = "async def entrypoint(session):\n    session.metadata['value'] = 'unrelated'\n"


def test_a_changed_helper_reloads_the_agents_that_import_it(
    agents_dir: Path, run_loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    write_agent(agents_dir, "user", HELPER_AGENT)
    write_agent(agents_dir, "other", UNRELATED)
    write_agent(agents_dir, "_helpers", "from _base import BASE\ndef value():\n    return BASE\n")
    write_agent(agents_dir, "_base", "BASE = 'v1'\n")
    write_agent(agents_dir, "_unused", "X = 1\n")

    async def value_of(pool: AgentPool, agent: str) -> str:
        handle = await pool.start_session(agent)
        assert await handle is SessionState.ENDED, handle.error
        return str(handle.session.metadata["value"])

    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:
            pool.discover(agents_dir)
            reloader = Reloader(pool, agents_dir)
            reloader.prime()
            assert await value_of(pool, "user") == "v1"

            # A helper of a helper, saved at the same size: the agent sees it on its next session.
            write_agent(agents_dir, "_base", "BASE = 'v2'\n")
            await reloader.check()
            assert await value_of(pool, "user") == "v2"

            write_agent(agents_dir, "_unused", "X = 2\n")
            await reloader.check()

            (agents_dir / "_helpers.py").unlink()  # the agent cannot load: it keeps its last version
            await reloader.check()
            assert await value_of(pool, "user") == "v2"

    with caplog.at_level(logging.INFO, logger="openrtc.reload"):
        run_loop(main())
    lines = [r.getMessage() for r in caplog.records]
    assert "helper _base.py changed: reloading 'user'" in lines
    assert "agent 'user' reloaded from user.py (_base.py changed)" in lines
    assert "helper _unused.py changed: no agent imports it" in lines
    assert "helper _helpers.py deleted: reloading 'user'" in lines
    assert not any("'other'" in line for line in lines)  # nothing imports a changed file into it
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and "user.py:1: import failed" in failed[0], failed
