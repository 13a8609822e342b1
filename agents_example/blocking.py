"""An agent with an accidental blocking call on the event loop: `time.sleep` hidden in a helper.

What it shows: the bug openrtc exists to find. While `lookup_customer` sleeps, every other session in
the worker is frozen. The fixed version is `blocking_fixed.py`.
"""

import asyncio
import time

from openrtc import Agent, Session


def lookup_customer(caller: str) -> dict[str, str]:
    time.sleep(0.3)  # stands for a synchronous HTTP or database client
    return {"caller": caller, "tier": "gold"}


class Blocking(Agent):
    name = "blocking"

    async def run(self, session: Session) -> None:
        customer = lookup_customer(str(session.metadata.get("caller", "unknown")))
        session.log.info("customer %s", customer)
        await asyncio.sleep(1.0)
