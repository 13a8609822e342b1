"""A support agent whose `prewarm` loads a shared resource once per worker, not once per session.

What it shows: the density win. The knowledge base (here a generated FAQ index, standing in for a
model or an embedding table) is built once; every session reads the same object through
`session.shared`.
"""

import asyncio
import random

from openrtc import Agent, Session


class Support(Agent):
    name = "support"

    @classmethod
    async def prewarm(cls, shared: dict) -> None:
        shared["faq"] = {f"question {i}": f"answer {i}" * 20 for i in range(20_000)}

    async def run(self, session: Session) -> None:
        faq = session.shared["faq"]
        for _ in range(int(session.metadata.get("turns", 3))):
            question = f"question {random.randrange(len(faq))}"
            session.log.debug("answer: %s", faq[question][:20])
            await asyncio.sleep(random.uniform(0.1, 0.5))
