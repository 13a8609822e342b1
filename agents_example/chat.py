"""A chat agent: each turn is one call to an OpenAI-compatible chat endpoint, streamed.

What it shows: the healthy case, and what a session costs. Hundreds of these share one worker
cheaply (a session that awaits costs nothing while it waits), and `openrtc.usage.instrument` records
every call: tokens, prompt-cache hits (the conversation grows each turn, so its start is cached), cost.
`top` shows them in IN, OUT, CACHE% and COST; `openrtc stats` reads them back from the event log.
With `{"clock_in_prompt": true}` in its metadata, a session puts the time first in its system prompt:
its cache hit rate falls to nothing (the demo does it for every fourth chat session).

The endpoint comes from `OPENAI_BASE_URL` and `OPENAI_API_KEY`: `openrtc demo` points them at a
simulated LLM it starts on loopback (no network, no model: canned words, made-up but realistic usage).
Without them, each turn waits 0.2-0.8 s and records its call by hand with `session.usage.record`, so the
agent still runs anywhere (its model, `simulated`, has no known price: its cost stays unknown).
"""

import asyncio
import datetime
import os
import random

from openrtc import Agent, Session
from openrtc.usage import instrument

try:  # imported with the agent, at worker start: imported inside a session, it would block the loop
    from openai import AsyncOpenAI
except ImportError:  # the `examples` extra is not installed: the offline mode below needs nothing
    AsyncOpenAI = None

MODEL = os.environ.get("OPENRTC_CHAT_MODEL", "gpt-4o-mini")


class Chat(Agent):
    name = "chat"

    @classmethod
    async def prewarm(cls, shared: dict) -> None:
        if AsyncOpenAI is not None and os.environ.get("OPENAI_BASE_URL"):
            # One client for the worker, made before any session: making one loads the TLS
            # certificates (about 100 ms with the loop blocked; `top` showed it at this agent's first
            # line when each session made its own), and one client pools its connections.
            shared["llm"] = instrument(AsyncOpenAI())

    async def run(self, session: Session) -> None:
        turns = int(session.metadata.get("turns", 5))
        client = session.shared.get("llm")
        if client is None:
            await self.offline(session, turns)
            return
        system = "You are a helpful support agent. " * 40
        clock = bool(session.metadata.get("clock_in_prompt"))
        messages = [{"role": "system", "content": system}]
        for turn in range(1, turns + 1):
            if session.draining.is_set():
                session.log.info("worker draining: ending after turn %d", turn - 1)
                return
            messages.append(
                {"role": "user", "content": f"question {turn} from {session.metadata.get('caller')}"}
            )
            if clock:
                # A cache-buster: the prompt's first characters change on every call, so the
                # provider's prompt cache, which matches prefixes, never hits
                # (runbooks/cost-and-usage.md). Put what changes at the end instead.
                messages[0]["content"] = f"Now: {datetime.datetime.now().isoformat()}. {system}"
            stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
            async with stream:  # closed here, not by the garbage collector in a task of its own
                reply = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
            messages.append({"role": "assistant", "content": "".join(reply)})

    async def offline(self, session: Session, turns: int) -> None:
        for turn in range(1, turns + 1):
            if session.draining.is_set():
                session.log.info("worker draining: ending after turn %d", turn - 1)
                return
            latency = random.uniform(0.2, 0.8)
            await asyncio.sleep(latency)  # the LLM call
            session.usage.record(
                "simulated", input_tokens=300 * turn, output_tokens=60, latency_ms=latency * 1000
            )
