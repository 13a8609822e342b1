"""The capacity curve (issue 21): how many sessions of a given shape one worker holds, and what grows
with the count.

    make bench-capacity        (or: .venv/bin/python benchmarks/bench_capacity.py [--quick])

Capacity. Two shapes: voice-like sessions (a 20 ms frame timer at a random phase, 0.3 ms of CPU per
frame, an utterance every 50 frames handled in a child task of 1 ms) and chat-like sessions (await a
0.5-2 s model answer, 0.2 ms of CPU on it, a tool call in a child task). For each, the largest count
whose p99 timer lateness (a frame's due time, or the answer's) stays at most 10 ms, for coroutine and
process isolation, asyncio and uvloop, introspection on and off. A trial is a fresh worker process
(`openrtc`'s `AgentPool` on agent files, as `openrtc start` runs them) with N sessions that all measure
the same few seconds; a search doubles N until a trial fails, then bisects to within 15%.

The curve. One worker with 1 to 10,000 chat-like sessions: the full snapshot's and the live view's
request (wall time, bytes), `top --once` (whole process), the worker's RSS, and introspection's CPU
(`cost_pct`) with nobody looking and with the live view asking every second. Plotted to
`benchmarks/out/capacity.png`; everything in `benchmarks/out/capacity.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from openrtc.introspection.client import WorkerClient

LATENESS_BAR_MS = 10.0

COMMON = """
        import asyncio, json, os, random, time

        def spin(seconds):
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass

        # Sessions go on this long past the measured seconds: their ends (each a little bookkeeping
        # on the loop) fall outside the window, as they would in a steady worker.
        TAIL_S = 0.5

        def record(path, late):
            # One line per session, in one write: sessions in other processes append to the same file.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, (json.dumps(late) + "\\n").encode())
            finally:
                os.close(fd)
"""

AGENTS = {
    "voice": COMMON
    + """

        async def utterance():
            spin(0.001)

        async def entrypoint(session):
            m = session.metadata
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, m["begin"] - time.time()) + random.uniform(0, 0.02))
            # Each session's utterances at its own frame of every 50, not all at once.
            due, end, late, frames = loop.time(), loop.time() + m["seconds"], [], 0
            turn = random.randrange(50)
            while due < end + TAIL_S:
                due += 0.02
                await asyncio.sleep(max(0.0, due - loop.time()))
                if due < end:
                    late.append(round((loop.time() - due) * 1000, 3))
                spin(0.0003)
                frames += 1
                if frames % 50 == turn:
                    await asyncio.create_task(utterance())
            record(m["out"], late)
    """,
    "chat": COMMON
    + """

        async def tool():
            spin(0.0001)
            await asyncio.sleep(0.01)

        async def entrypoint(session):
            m = session.metadata
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, m["begin"] - time.time()))
            end, late = loop.time() + m["seconds"], []
            while loop.time() < end + TAIL_S:
                wait = random.uniform(0.5, 2.0)
                due = loop.time() + wait
                await asyncio.sleep(wait)  # the model's answer
                if due < end:
                    late.append(round((loop.time() - due) * 1000, 3))
                spin(0.0002)
                await asyncio.create_task(tool())
            record(m["out"], late)
    """,
}

TRIAL = """
import asyncio, json, sys, time
from openrtc import AgentPool
from openrtc.runtime.loops import loop_factory

agents, shape, isolation, loop_kind, intro, n, seconds, out = sys.argv[1:9]
n, seconds = int(n), float(seconds)

async def main():
    async with AgentPool(isolation=isolation, enable_introspection=intro == "on", drain_timeout_s=30) as pool:
        pool.discover(agents)
        # Every session measures the same seconds, once all have started.
        begin = time.time() + 1.0 + n * (0.01 if isolation == "process" else 0.0003)
        handles = [
            await pool.start_session(shape, metadata={"begin": begin, "seconds": seconds, "out": out})
            for _ in range(n)
        ]
        states = await asyncio.gather(*handles)
        errors = sorted({str(h.error)[:200] for h, s in zip(handles, states) if s != "ended"})
        print(json.dumps({"ended": sum(s == "ended" for s in states), "errors": errors[:3]}))

with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
    runner.run(main())
"""


def trial(
    agents: Path, shape: str, isolation: str, loop_kind: str, intro: str, n: int, seconds: float
) -> dict[str, Any]:
    """N sessions of `shape` in a fresh worker: their p99 lateness over the same `seconds`."""
    with tempfile.NamedTemporaryFile(prefix="capacity-", suffix=".jsonl", delete=False) as f:
        out = f.name
    try:
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                TRIAL,
                str(agents),
                shape,
                isolation,
                loop_kind,
                intro,
                str(n),
                str(seconds),
                out,
            ],
            capture_output=True,
            text=True,
            timeout=120 + n * 0.05,
            check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"trial failed: {child.stderr[-1500:]}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        late = sorted(x for line in Path(out).read_text().splitlines() for x in json.loads(line))
    finally:
        os.unlink(out)
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))] if late else float("inf")
    ok = result["ended"] == n and p99 <= LATENESS_BAR_MS
    out = {"n": n, "p99_ms": round(p99, 2), "samples": len(late), "ended": result["ended"], "ok": ok}
    return {**out, "errors": result["errors"]} if result["errors"] else out


def capacity(
    agents: Path, shape: str, isolation: str, loop_kind: str, intro: str, start: int, cap: int, seconds: float
) -> dict[str, Any]:
    """The largest N that passes (doubling, then bisecting to 15%), with every trial run."""
    trials = []
    passed, failed = 0, None
    n = min(start, cap)
    while failed is None and n <= cap:
        t = trial(agents, shape, isolation, loop_kind, intro, n, seconds)
        trials.append(t)
        if t["ok"]:
            passed, n = n, n * 2
        else:
            failed = n
    if failed is None:
        return {"sessions": passed, "at_cap": True, "trials": trials}
    while failed - passed > max(1, passed * 0.15):
        n = (passed + failed) // 2
        t = trial(agents, shape, isolation, loop_kind, intro, n, seconds)
        trials.append(t)
        passed, failed = (n, failed) if t["ok"] else (passed, n)
    return {"sessions": passed, "at_cap": False, "trials": trials}


CURVE_WORKER = """
import asyncio, sys
from openrtc import AgentPool

async def chat(session):
    while not session.draining.is_set():
        await asyncio.sleep(1)

async def main():
    async with AgentPool(socket_path=sys.argv[1], drain_timeout_s=5) as pool:
        pool.add("chat", chat)
        for i in range(int(sys.argv[2])):
            await pool.start_session("chat", tenant=f"t{i % 7}")
        print("ready", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def curve_point(n: int, seconds: float) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="ortc-cap-"))
    os.chmod(home, 0o700)
    sock = home / "w.sock"
    proc = subprocess.Popen(
        [sys.executable, "-c", CURVE_WORKER, str(sock), str(n)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(3.0)  # every session has slept its first second; the window has filled

        def request(**fields: Any) -> tuple[float, int, dict[str, Any]]:
            time.sleep(0.25)  # past the worker's 0.2 s reuse of an encoded snapshot: a fresh build each
            began = time.perf_counter()
            with WorkerClient(sock, timeout=30) as client:
                doc = client.request("snapshot", **fields)
            wall = (time.perf_counter() - began) * 1000
            return wall, len(json.dumps(doc)), doc

        full = [request() for _ in range(3)]
        live = [request(sort="cpu", limit=100) for _ in range(5)]
        openrtc = str(Path(sys.executable).with_name("openrtc"))
        once = []
        for _ in range(5):
            began = time.perf_counter()
            subprocess.run(
                [openrtc, "top", "--once", "--socket", str(sock)], check=True, stdout=subprocess.DEVNULL
            )
            once.append((time.perf_counter() - began) * 1000)
        time.sleep(seconds)  # nobody looking
        idle_cost = request(limit=1)[2]["worker"]["introspection"]["cost_pct"]
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(1.0):
                request(sort="cpu", limit=100)

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(seconds)
        stop.set()
        watcher.join()
        live_cost = request(limit=1)[2]["worker"]["introspection"]["cost_pct"]
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "sessions": n,
        "full_snapshot_ms": round(statistics.median(w for w, _, _ in full), 1),
        "full_snapshot_bytes": full[-1][1],
        "live_view_ms": round(statistics.median(w for w, _, _ in live), 1),
        "live_view_bytes": live[-1][1],
        "top_once_ms": round(statistics.median(once), 1),
        "worker_rss_mb": round(rss, 1),
        "cost_pct_nobody_looking": idle_cost,
        "cost_pct_live_view": live_cost,
    }


def plot(curve: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [p["sessions"] for p in curve]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    panels = [
        ("snapshot request (ms)", [("full", "full_snapshot_ms"), ("live view", "live_view_ms")], True),
        ("snapshot bytes (JSON)", [("full", "full_snapshot_bytes"), ("live view", "live_view_bytes")], True),
        ("top --once, whole process (ms)", [("table", "top_once_ms")], False),
        ("worker RSS (MB)", [("rss", "worker_rss_mb")], False),
        (
            "introspection CPU, cost_pct (%)",
            [("nobody looking", "cost_pct_nobody_looking"), ("live view", "cost_pct_live_view")],
            False,
        ),
    ]
    for ax, (title, series, logy) in zip(axes.flat, panels, strict=False):
        for label, key in series:
            ax.plot(n, [p[key] for p in curve], marker="o", label=label)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.set_xlabel("sessions")
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
    axes.flat[-1].axis("off")
    fig.suptitle(
        f"openrtc, one worker of chat-like sessions ({platform.machine()}, {psutil.cpu_count()} cores)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="short trials and a short curve, for a smoke run"
    )
    parser.add_argument("--out", default="benchmarks/out/capacity.json")
    parser.add_argument("--png", default="benchmarks/out/capacity.png")
    args = parser.parse_args()
    q = args.quick
    began = time.monotonic()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
        "lateness_bar_ms": LATENESS_BAR_MS,
        "capacity": [],
    }
    with tempfile.TemporaryDirectory(prefix="capacity-agents-") as tmp:
        agents = Path(tmp)
        for name, source in AGENTS.items():
            (agents / f"{name}.py").write_text(textwrap.dedent(source))
        # (shape, first N, cap per isolation): process sessions cost ~3 MB and 6 ms each to start.
        shapes = {
            "voice": (16, {"coroutine": 1024, "process": 256}),
            "chat": (1024, {"coroutine": 16384, "process": 256}),
        }
        for shape, (first, caps) in shapes.items():
            for isolation in ("coroutine", "process"):
                for loop_kind in ("asyncio", "uvloop"):
                    for intro in ("off", "on"):
                        result = capacity(
                            agents,
                            shape,
                            isolation,
                            loop_kind,
                            intro,
                            first if not q else max(2, first // 8),
                            caps[isolation] if not q else max(4, caps[isolation] // 16),
                            2.0 if q else 3.0,
                        )
                        row = {
                            "shape": shape,
                            "isolation": isolation,
                            "loop": loop_kind,
                            "introspection": intro,
                            **result,
                        }
                        report["capacity"].append(row)
                        print(json.dumps({k: v for k, v in row.items() if k != "trials"}), flush=True)
    sizes = (1, 10, 100) if q else (1, 10, 100, 1000, 10000)
    report["curve"] = []
    for n in sizes:
        # A phase outlasts introspection's 5 s window: each `cost_pct` reading is that phase's alone.
        report["curve"].append(curve_point(n, 2.0 if q else 6.0))
        print(json.dumps(report["curve"][-1]), flush=True)
    report["minutes"] = round((time.monotonic() - began) / 60, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    plot(report["curve"], Path(args.png))
    print(f"wrote {args.out} and {args.png} in {report['minutes']} min")


if __name__ == "__main__":
    main()
