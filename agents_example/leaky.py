"""An agent that leaks memory on every turn: a module-level cache that is never evicted.

What it shows: memory that grows with traffic and never comes back. In coroutine mode every session
shares one heap, so `top` can only show the worker's RSS rising and each session's equal share of it
(`MEM`, `PEAK`); the runbook `runbooks/memory.md` says how to confirm the culprit and contain it
(`isolation="process"` with `--memory-limit-mb`, which kills just the session that grows).
"""

import asyncio

from openrtc import Agent, Session

_history: list[bytes] = []  # "cache of past transcripts": the bug


class Leaky(Agent):
    name = "leaky"

    async def run(self, session: Session) -> None:
        for _ in range(int(session.metadata.get("turns", 5))):
            if session.draining.is_set():
                return
            _history.append(b"x" * (256 * 1024))  # 256 KB per turn (written, so resident), kept forever
            await asyncio.sleep(0.3)
        session.log.info("cache now holds %d transcripts", len(_history))
