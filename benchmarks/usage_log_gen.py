"""Writes an event log as workers would, for `bench_usage.py`: SESSIONS sessions of 10 events each
(`session.start`, 6 `llm.call`, 2 `tool.call`, `session.end` with its totals), spread over 4 workers and
30 days. It writes through the worker's own `EventLog` (lines, index, rotation), with the end's totals
from the same `Totals` the worker sums with; the mix of models, providers and prices is realistic (some
with no known price).

    .venv/bin/python benchmarks/usage_log_gen.py DIR [--sessions 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from openrtc.usage.eventlog import EventLog, Retention
from openrtc.usage.totals import Totals

MODELS = [  # (provider, model, $ per million in / cached / out, or None: no known price)
    ("openai", "gpt-4o-mini", (0.15, 0.075, 0.60)),
    ("openai", "gpt-4.1", (2.0, 0.5, 8.0)),
    ("anthropic", "claude-haiku-4-5", (1.0, 0.1, 5.0)),
    ("acme", "house-model", None),
]
AGENTS = ["chat", "voice", "support", "parser"]
TENANTS = ["acme", "globex", "initech", None]
WORKERS = 4
DAY = 86400.0


def session_events(rng: random.Random, sid: str, worker: str, start: float) -> list[tuple[str, float, dict]]:
    agent, tenant = rng.choice(AGENTS), rng.choice(TENANTS)
    events: list[tuple[str, float, dict]] = [
        (
            "session.start",
            start,
            {
                "agent": agent,
                "tenant": tenant,
                "metadata": {"caller": f"c{rng.randrange(1000)}"},
                "worker_id": worker,
                "attempt": 1,
            },
        )
    ]
    totals = Totals()
    at = start
    prompt = rng.randint(400, 2000)
    for turn in range(6):
        provider, model, price = rng.choice(MODELS)
        cached = (prompt - 200) // 128 * 128 if turn else 0
        out = rng.randint(30, 300)
        cost = None
        if price is not None:
            cost = round(((prompt - cached) * price[0] + cached * price[1] + out * price[2]) / 1e6, 12)
        at += rng.uniform(0.3, 2.0)
        data = {
            "model": model,
            "provider": provider,
            "input_tokens": prompt,
            "output_tokens": out,
            "cache_read_tokens": cached,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "cost_usd": cost,
            "cost_source": "genai_prices" if cost is not None else "unknown",
            "latency_ms": round(rng.uniform(200, 1500), 1),
            "finish_reason": "stop",
        }
        events.append(("llm.call", at, data))
        totals.add_event("llm.call", data)
        prompt += out + rng.randint(20, 200)
        if turn in (1, 4):
            at += rng.uniform(0.05, 0.5)
            ok = rng.random() > 0.1
            tool = {
                "tool": rng.choice(["lookup_order", "search"]),
                "duration_ms": round(rng.uniform(5, 400), 3),
                "ok": ok,
                "error": None if ok else "TimeoutError",
            }
            events.append(("tool.call", at, tool))
            totals.add_event("tool.call", tool)
    at += rng.uniform(0.1, 1.0)
    events.append(
        (
            "session.end",
            at,
            {
                "state": "ended",
                "reason": None,
                "error": None,
                "wall_s": round(at - start, 6),
                "cpu_s": round(rng.uniform(0.01, 0.2), 6),
                "llm_s": round(totals.llm_s, 6),
                "tool_s": round(totals.tool_s, 6),
                "totals": totals.as_dict(),
                "cost_usd": totals.cost_usd,
                "unknown_cost_calls": totals.unknown_cost_calls,
                "agent": agent,
                "tenant": tenant,
                "started_at": start,
                "worker_id": worker,
                "attempt": 1,
            },
        )
    )
    return events


def generate(folder: Path, sessions: int, seed: int = 1, now: float | None = None) -> list[str]:
    """Write the log through the worker's own writer (`EventLog`: lines, index, rotation); returns the
    session ids."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    first = now - 30 * DAY
    step = 30 * DAY / sessions
    clock = [first]
    logs = [
        EventLog(folder, f"worker{n}", Retention(None, None), clock=lambda: clock[0]) for n in range(WORKERS)
    ]
    for log in logs:
        log.start()
    ids = []
    for n in range(sessions):
        sid = f"{rng.getrandbits(48):012x}"
        ids.append(sid)
        clock[0] = start = first + n * step
        log = logs[n % WORKERS]
        for seq, (kind, ts, data) in enumerate(session_events(rng, sid, log.worker_id, start)):
            log.write(sid, seq, kind, ts, data)
        if n % 1000 == 999:
            for log in logs:
                log.flush()
    for log in logs:
        log.close()
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    ids = generate(args.folder, args.sessions, args.seed)
    size = sum(p.stat().st_size for p in args.folder.iterdir())
    print(
        f"{len(ids)} sessions, {len(ids) * 10} events, {size / 1e6:.0f} MB in {args.folder} "
        f"({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
