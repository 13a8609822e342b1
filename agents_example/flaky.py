"""A booking agent whose upstream fails now and then: one session in five ends with an exception.

What it shows: a failed session in `top`. The row says `failed` and, in its last column, why
(`RuntimeError: booking service returned 503`); `enter` shows the same, and the worker's log has the
whole traceback with the session's id. The other sessions never notice.
"""

import asyncio
import random

from openrtc import Agent, Session


async def book(caller: str) -> str:
    await asyncio.sleep(random.uniform(0.2, 1.0))  # the upstream call
    if random.random() < 0.2:
        raise RuntimeError("booking service returned 503")
    return f"booking for {caller}"


class Flaky(Agent):
    name = "flaky"

    async def run(self, session: Session) -> None:
        confirmation = await book(str(session.metadata.get("caller", "unknown")))
        session.log.info("%s", confirmation)
        await asyncio.sleep(random.uniform(1.0, 3.0))
