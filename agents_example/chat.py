"""A chat agent that mostly waits on I/O: each turn waits for a (simulated) LLM reply.

What it shows: the healthy case. Hundreds of these share one worker cheaply, because a session that
awaits costs nothing while it waits. The LLM latency is simulated with `asyncio.sleep` (0.2-0.8 s),
the shape of a real streaming HTTP call.
"""

import asyncio
import random

from openrtc import Agent, Session


class Chat(Agent):
    name = "chat"

    async def run(self, session: Session) -> None:
        turns = int(session.metadata.get("turns", 5))
        for turn in range(1, turns + 1):
            if session.draining.is_set():
                session.log.info("worker draining: ending after turn %d", turn - 1)
                return
            await asyncio.sleep(random.uniform(0.2, 0.8))  # the LLM call
            session.log.debug("turn %d replied", turn)
