"""A CPU-heavy agent: every message is parsed with regular expressions before the reply.

What it shows: steady CPU per session without any blocking call. Each message costs a few
milliseconds (about 5) of pure CPU on the loop (tokenising a generated transcript and pulling out entities);
`top` shows these sessions at the top of the CPU% column. Many of them at once make the loop late
for everyone: that is the `overload` an operator meets, and the answer is fewer sessions per worker
(or `isolation="process"`), not a code fix.
"""

import asyncio
import random
import re

from openrtc import Agent, Session

WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
ORDER_ID = re.compile(r"\b[A-Z]{2}-\d{4,6}\b")
AMOUNT = re.compile(r"\$\d+(?:\.\d\d)?")
VOCABULARY = ["order", "refund", "shipping", "address", "card", "please", "thanks", "delayed", "box"]


def transcript(turn: int) -> str:
    words = random.choices(VOCABULARY, k=15_000)
    words.insert(random.randrange(len(words)), f"AB-{1000 + turn}")
    words.insert(random.randrange(len(words)), f"${random.randrange(5, 500)}.99")
    return " ".join(words)


def parse(text: str) -> dict[str, object]:
    return {
        "words": len(WORD.findall(text)),
        "orders": ORDER_ID.findall(text),
        "amounts": AMOUNT.findall(text),
    }


class Parser(Agent):
    name = "parser"

    async def run(self, session: Session) -> None:
        for turn in range(int(session.metadata.get("turns", 8))):
            if session.draining.is_set():
                return
            found = parse(transcript(turn))  # a few ms of CPU, on the loop
            session.log.debug("parsed %s", found)
            await asyncio.sleep(random.uniform(0.1, 0.3))
