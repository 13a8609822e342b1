"""An agent that leaks memory on every turn (256 KB, or `kb` from the metadata): a module-level cache
that is never evicted.

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
        kb = int(session.metadata.get("kb", 256))
        for _ in range(int(session.metadata.get("turns", 5))):
            if session.draining.is_set():
                return
            _history.append(b"x" * (kb * 1024))  # written, so resident; kept forever
            await asyncio.sleep(0.3)
        session.log.info("cache now holds %d transcripts", len(_history))
