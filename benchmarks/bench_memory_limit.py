"""How far a fast-growing session overshoots process mode's memory limit before it is killed (issue 15).

A session in its own process touches 10 MB every 50 ms (200 MB/s) against `memory_limit_mb=200`,
five times in a row. Reported per run: the session's end reason, the memory it held when last heard
from (its log) and the highest RSS the worker read of it.

Run: `.venv/bin/python benchmarks/bench_memory_limit.py [--runs 5] [--limit-mb 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
from pathlib import Path

from openrtc import AgentPool

GROWER = """\
import asyncio


async def entrypoint(session):
    chunks = []
    for _ in range(100):
        chunk = bytearray(10 * 1024 * 1024)
        for i in range(0, len(chunk), 4096):  # touched, so resident
            chunk[i] = 1
        chunks.append(chunk)
        session.log.info("holding %d MB", 10 * len(chunks))
        await asyncio.sleep(0.05)
"""


class Held(logging.Handler):
    """The last `holding N MB` each child logged (its records reach the worker's logging)."""

    def __init__(self) -> None:
        super().__init__()
        self.mb: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("holding "):
            self.mb.append(int(message.split()[1]))


async def run(agents: Path, runs: int, limit_mb: float, held: Held) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    async with AgentPool(
        isolation="process", enable_introspection=False, memory_limit_mb=limit_mb, drain_timeout_s=1
    ) as pool:
        pool.discover(agents)
        for _ in range(runs):
            held.mb.clear()
            handle = await pool.start_session("grower")
            await handle
            session = handle.session
            peak = session.process.peak_mb if session.process is not None else None
            out.append(
                {
                    "reason": session.reason,
                    "held_mb": max(held.mb, default=0),
                    "peak_rss_mb": round(peak, 1) if peak is not None else None,
                }
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--limit-mb", type=float, default=200.0)
    args = parser.parse_args()
    held = Held()
    logging.getLogger().addHandler(held)  # a child's records are handled again in the worker, at the root
    logging.getLogger().setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as folder:
        agents = Path(folder)
        (agents / "grower.py").write_text(GROWER)
        results = asyncio.run(run(agents, args.runs, args.limit_mb, held))
    print(json.dumps({"limit_mb": args.limit_mb, "runs": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
