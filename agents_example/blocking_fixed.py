"""The fixed `blocking.py`: the synchronous call runs in a thread, so the loop keeps serving others."""

import asyncio

from blocking import lookup_customer

from openrtc import Agent, Session


class BlockingFixed(Agent):
    name = "blocking_fixed"

    async def run(self, session: Session) -> None:
        customer = await asyncio.to_thread(lookup_customer, str(session.metadata.get("caller", "unknown")))
        session.log.info("customer %s", customer)
        await asyncio.sleep(1.0)
