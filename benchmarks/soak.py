"""Soak test (issue 7): a worker under session churn for SOAK_SECONDS, watched from outside.

A real worker (`openrtc start`) runs the example agents (all but `leaky`, which leaks on purpose) plus
a `flaky` agent that fails a third of the time; `chat` talks to the demo's simulated OpenAI-compatible
endpoint through the real `openai` SDK, so every call is recorded, priced and written to the event
log. A driver dispatches about 50 sessions a second (75 in the warm-up) with lifetimes from 0.1 to
10 s, and `openrtc top --once --json` is polled every second. Around the churn, two idle phases (no
session, ended rows expired) measure the worker at rest.

It fails (exit 1) when, from the first idle phase to the last:
- the worker's RSS grew by more than 5 MB,
- its open fds or threads grew,
- or sessions (ended ones included) are still listed once idle: their state was never released;
- or, after the worker drained and exited, `openrtc stats usage` does not find every session it
  started in the event log, each with its end, and the LLM calls the chat sessions made.

The report goes to benchmarks/out/soak/: `report.md` (the verdict and a table over time), `soak.png`
(RSS, fds, threads, loop lag p99, snapshot size and active sessions over time), `samples.json`.

Run: `make soak` (SOAK_SECONDS, default 1200); CI runs `make soak SOAK_SECONDS=60`.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from openrtc.errors import OpenRTCError
from openrtc.introspection.client import WorkerClient
from openrtc.introspection.schema import ENDED_KEEP_S

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "soak"
OPENRTC = str(Path(sys.executable).with_name("openrtc"))
RATE = 50.0
WARMUP_HOTTER = 1.5
RSS_GROWTH_LIMIT_MB = 5.0
MIX = {"chat": 40, "support": 20, "voice": 10, "blocking_fixed": 10, "flaky": 12, "parser": 5, "blocking": 3}
FLAKY = '''\
"""Fails a third of the time, after a random part of its life: the soak's failing sessions."""

import asyncio
import random


async def entrypoint(session):
    await asyncio.sleep(float(session.metadata.get("life", 1.0)))
    if random.random() < 1 / 3:
        raise RuntimeError("flaky agent failed on purpose")
'''


def lifetime_metadata(agent: str) -> dict[str, Any]:
    """Metadata giving a session of `agent` a life of about 0.1 to 10 s."""
    life = random.uniform(0.1, 10.0)
    # support: ~0.5 s a turn. chat: one streamed LLM call a turn (~0.6 s), a quarter as many turns:
    # as many as support's would be ~200 streamed calls a second, enough to saturate the worker's loop
    return {
        "caller": f"soak-{random.randrange(10_000)}",
        "life": life,
        "turns": max(1, round(life / (2.0 if agent == "chat" else 0.5))),
        "frames": max(5, round(life / 0.02)),  # voice: 20 ms frames
    }


class Driver(threading.Thread):
    """Dispatches the mix at `rate` per second until stopped."""

    def __init__(self, socket: Path, rate: float) -> None:
        super().__init__(name="soak-driver", daemon=True)
        self.socket = socket
        self.rate = rate
        self.stop = threading.Event()
        self.dispatched = 0
        self.refused = 0

    def run(self) -> None:
        agents, weights = list(MIX), list(MIX.values())
        with WorkerClient(self.socket, timeout=10) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                agent = random.choices(agents, weights)[0]
                try:
                    client.request("dispatch", agent=agent, metadata=lifetime_metadata(agent))
                    self.dispatched += 1
                except OpenRTCError:
                    self.refused += 1
                next_at += 1.0 / self.rate
                self.stop.wait(max(0.0, next_at - time.monotonic()))


def sample(worker: psutil.Process, env: dict[str, str], socket: Path, t0: float) -> dict[str, Any]:
    out = subprocess.run(
        [OPENRTC, "top", "--once", "--json", "--socket", str(socket)],
        capture_output=True,
        env=env,
        timeout=30,
        check=True,
    ).stdout
    snap = json.loads(out)
    with worker.oneshot():
        rss = worker.memory_info().rss / 2**20
        fds = worker.num_fds()
        threads = worker.num_threads()
    return {
        "t": round(time.monotonic() - t0, 1),
        "rss_mb": round(rss, 2),
        "fds": fds,
        "threads": threads,
        "lag_p99_ms": snap["worker"]["loop_lag_ms"]["p99"],
        "snapshot_kb": round(len(out) / 1024, 1),
        "active": snap["worker"]["sessions_active"],
        "listed": len(snap["sessions"]),
        "started": snap["worker"]["sessions_started"],
        "failed": snap["worker"]["sessions_failed"],
    }


def idle(
    worker: psutil.Process, env: dict[str, str], socket: Path, t0: float, samples: list[Any]
) -> dict[str, Any]:
    """Wait for every session to end and the ended rows to expire, then take the resting figures."""
    deadline = time.monotonic() + 60
    while True:
        now = sample(worker, env, socket, t0)
        samples.append(now)
        if now["active"] == 0 and now["listed"] == 0:
            break
        if time.monotonic() > deadline:
            return now  # reported as state not released
        time.sleep(1.0)
    time.sleep(ENDED_KEEP_S / 5)
    rest = sample(worker, env, socket, t0)
    samples.append(rest)
    return rest


def plot(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        ("rss_mb", "worker RSS (MB)"),
        ("fds", "open fds"),
        ("threads", "threads"),
        ("lag_p99_ms", "loop lag p99 (ms)"),
        ("snapshot_kb", "snapshot (KB)"),
        ("active", "active sessions"),
    ]
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 12), sharex=True)
    t = [s["t"] for s in samples]
    for ax, (key, label) in zip(axes, series, strict=True):
        ax.plot(t, [s[key] for s in samples], linewidth=1)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds")
    fig.suptitle("openrtc soak: worker under churn")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "1200"))
    OUT.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="ortc-soak-"))
    os.chmod(home, 0o700)
    agents = home / "agents"
    shutil.copytree(ROOT / "agents_example", agents, ignore=shutil.ignore_patterns("leaky.py", "__pycache__"))
    (agents / "flaky.py").write_text(FLAKY)
    socket = home / "worker.sock"
    events = home / "events"
    # In a process of its own: on a thread here it would take the GIL from the driver.
    llm = subprocess.Popen([sys.executable, "-m", "openrtc.cli.llmsim"], stdout=subprocess.PIPE, text=True)
    assert llm.stdout is not None
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(home),
        "OPENAI_BASE_URL": llm.stdout.readline().strip(),
        "OPENAI_API_KEY": "soak-no-key",
    }
    log_path = OUT / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                OPENRTC,
                "start",
                str(agents),
                "--socket",
                str(socket),
                "--log-format",
                "json",
                "--log-level",
                "warning",
                "--drain-timeout",
                "5",
                "--log-dir",
                str(events),
            ],
            stderr=log,
            env=env,
        )
    samples: list[dict[str, Any]] = []
    verdict: list[str] = []
    try:
        while not socket.exists():
            if proc.poll() is not None:
                raise SystemExit(f"the worker exited with {proc.returncode}; see {log_path}")
            time.sleep(0.05)
        worker = psutil.Process(proc.pid)
        t0 = time.monotonic()
        warmup = min(120.0, max(30.0, seconds / 4), seconds / 2)
        # The warm-up runs hotter than the churn, so that its peaks of active sessions (and the
        # allocator's high-water mark they leave) cover the churn's: growth after it is the churn's own.
        phases = [("warm-up", warmup, RATE * WARMUP_HOTTER), ("churn", seconds - warmup, RATE)]
        rest: list[dict[str, Any]] = []
        for name, length, rate in phases:
            driver = Driver(socket, rate)
            driver.start()
            end = next_at = time.monotonic()
            end += length
            while time.monotonic() < end:
                samples.append(sample(worker, env, socket, t0))
                next_at += 1.0
                time.sleep(max(0.0, next_at - time.monotonic()))
            driver.stop.set()
            driver.join(10)
            rest.append(idle(worker, env, socket, t0, samples))
            print(
                f"{name}: {driver.dispatched} dispatched, {driver.refused} refused; at rest {rest[-1]}",
                flush=True,
            )
        first, last = rest
        growth = last["rss_mb"] - first["rss_mb"]
        checks = [
            (
                growth <= RSS_GROWTH_LIMIT_MB,
                f"RSS at rest grew {growth:+.2f} MB (limit {RSS_GROWTH_LIMIT_MB} MB)",
            ),
            (last["fds"] <= first["fds"], f"open fds at rest {first['fds']} -> {last['fds']}"),
            (last["threads"] <= first["threads"], f"threads at rest {first['threads']} -> {last['threads']}"),
            (last["listed"] == 0 and last["active"] == 0, f"sessions listed at rest: {last['listed']}"),
        ]
        verdict = [("ok   " if ok else "FAIL ") + text for ok, text in checks]
    finally:
        proc.terminate()
        proc.wait(30)
        llm.terminate()
        llm.wait(10)
    if samples:
        verdict.append(event_log_check(env, events, samples[-1]["started"]))
    (OUT / "samples.json").write_text(json.dumps(samples, indent=1))
    plot(samples, OUT / "soak.png")
    write_report(samples, verdict, seconds, proc.returncode)
    print("\n".join(verdict))
    print(f"report: {OUT / 'report.md'}")
    return 0 if all(line.startswith("ok") for line in verdict) and proc.returncode == 0 else 1


def event_log_check(env: dict[str, str], events: Path, started: int) -> str:
    """Whether the event log holds every session the worker started, each ended, with LLM calls."""
    out = subprocess.run(
        [OPENRTC, "stats", "usage", "--json", "--log-dir", str(events)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        return f"FAIL stats usage exited {out.returncode}: {out.stderr.strip()}"
    total = json.loads(out.stdout)["total"]
    cost = "unknown" if total["cost_usd"] is None else f"${total['cost_usd']:.4f}"
    ok = total["sessions"] == started and total["incomplete"] == 0 and total["calls"] > 0
    return (
        f"{'ok   ' if ok else 'FAIL '}event log: {total['sessions']} of {started} sessions, "
        f"{total['incomplete']} without an end, {total['calls']:,} LLM calls, "
        f"cost {cost} ({total['unknown_cost_calls']} calls unpriced)"
    )


def write_report(
    samples: list[dict[str, Any]], verdict: list[str], seconds: float, exit_code: int | None
) -> None:
    peak = max(samples, key=lambda s: s["active"])
    lines = [
        "# Soak report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cpus, Python "
        f"{platform.python_version()}; SOAK_SECONDS={seconds:g}; about {RATE:g} session starts a second.",
        "",
        *[f"- {line}" for line in verdict],
        f"- worker exit code after SIGTERM: {exit_code}",
        f"- sessions started: {samples[-1]['started']}, failed: {samples[-1]['failed']} (the flaky agent); "
        f"most active at once: {peak['active']}; "
        f"largest snapshot: {max(s['snapshot_kb'] for s in samples)} KB",
        "",
        "![soak](soak.png)",
        "",
        "| t (s) | RSS MB | fds | threads | lag p99 ms | snapshot KB | active | listed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    step = max(1, len(samples) // 40)
    for s in samples[::step]:
        lines.append(
            f"| {s['t']} | {s['rss_mb']} | {s['fds']} | {s['threads']} | {s['lag_p99_ms']} | "
            f"{s['snapshot_kb']} | {s['active']} | {s['listed']} |"
        )
    (OUT / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
