"""A voice-like agent: real CPU work on 20 ms audio frames (energy-based voice activity detection).

What it shows: steady, bounded CPU per session. Each frame is 320 samples of generated 16 kHz PCM;
the agent computes its RMS energy and flags speech. This is the load that decides how many voice
sessions one worker can hold.
"""

import asyncio
import math
import random
from array import array

from openrtc import Agent, Session

SAMPLE_RATE = 16_000
FRAME = SAMPLE_RATE // 50  # 20 ms


def frame_energy(samples: array) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples))


class Voice(Agent):
    name = "voice"

    async def run(self, session: Session) -> None:
        frames = int(session.metadata.get("frames", 250))  # 5 s of audio
        speech = 0
        for _ in range(frames):
            if session.draining.is_set():
                break
            amplitude = random.choice((200, 3000))
            pcm = array("h", (int(amplitude * math.sin(i / 7.0)) for i in range(FRAME)))
            if frame_energy(pcm) > 1000:
                speech += 1
            await asyncio.sleep(0.02)
        session.log.info("call done: %d of %d frames had speech", speech, frames)
