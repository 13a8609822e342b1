"""Workers in a fleet, for real: `openrtc start --nats` processes, a real `nats-server -js`, requests
published with the dispatch client, and the lifecycle events read back from the events stream."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from openrtc.fleet.client import connect, ensure_fleet, publish
from openrtc.fleet.protocol import EVENTS_STREAM, STREAM, VIEW_ROWS, Event, decode_event, subject
from tests.cli.worker import Worker, run_cli
from tests.fleet.server import NatsServer

AGENTS = {
    "sleeper": """
        import asyncio
        from openrtc import Agent, Session

        class Sleeper(Agent):
            name = "sleeper"

            async def run(self, session: Session) -> None:
                await asyncio.sleep(float(session.metadata.get("seconds", 0.2)))
                if session.metadata.get("fail"):
                    raise RuntimeError("asked to fail")
    """,
}


def write_agents(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.py").write_text(textwrap.dedent(AGENTS[name]))
    return folder


async def read_events(url: str) -> list[Event]:
    """Every lifecycle event in the events stream, in stream order."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(EVENTS_STREAM)
        if not info.state.messages:
            return []
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            out.append(decode_event((await js.get_msg(EVENTS_STREAM, seq)).data))
        return out
    finally:
        await nc.close()


async def dispatch_many(url: str, agent: str, count: int, **metadata: Any) -> list[str]:
    nc = await connect(url)
    try:
        js = nc.jetstream()
        await ensure_fleet(js)
        ids = []
        for _ in range(count):
            ids.append((await publish(js, agent, metadata=dict(metadata))).session_id)
        return ids
    finally:
        await nc.close()


def wait_for_ends(url: str, ids: list[str], timeout: float = 60.0) -> list[Event]:
    deadline = time.monotonic() + timeout
    while True:
        events = asyncio.run(read_events(url))
        ended = {e.session_id for e in events if e.final}
        if ended >= set(ids) or time.monotonic() > deadline:
            return events
        time.sleep(0.3)


def fleet_worker(agents: Path, home: Path, url: str, *flags: str) -> Worker:
    logs = home / f"logs-{time.monotonic_ns()}"
    return Worker("start", agents, home, "--nats", url, "--log-dir", str(logs), *flags).ready()


def join(workers: list[Worker], agents: Path, home: Path, url: str, *flags: str) -> Worker:
    """A worker that has joined the fleet (killed at the test's end by the `workers` fixture)."""
    worker = fleet_worker(agents, home, url, *flags)
    workers.append(worker)
    worker.wait_for_log("fleet: joined")
    return worker


def max_concurrent(events: list[Event], worker_id: str) -> int:
    """The most sessions `worker_id` ran at once, by the events' times (taken on the worker's loop)."""
    changes = sorted(
        (e.at, 1 if e.state == "running" else -1)
        for e in events
        if e.worker_id == worker_id and (e.state == "running" or e.final or e.state == "requeued")
    )
    running, peak = 0, 0
    for _, change in changes:
        running += change
        peak = max(peak, running)
    return peak


def test_a_worker_runs_what_is_dispatched_within_its_cap(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    agents = write_agents(tmp_path / "agents", "sleeper")
    worker = join(workers, agents, sock_home, nats_server.url, "--max-sessions", "4")
    ids = asyncio.run(dispatch_many(nats_server.url, "sleeper", 30, seconds=0.1))
    failing = asyncio.run(dispatch_many(nats_server.url, "sleeper", 1, fail=True))
    events = wait_for_ends(nats_server.url, ids + failing)

    finals = collections.Counter(e.session_id for e in events if e.final)
    assert set(finals) == set(ids + failing) and set(finals.values()) == {1}
    states = {e.session_id: e.state for e in events if e.final}
    assert {states[i] for i in ids} == {"ended"} and states[failing[0]] == "failed"
    (worker_id,) = {e.worker_id for e in events}
    assert max_concurrent(events, worker_id) <= 4
    assert not [r for r in worker.records() if "refused here" in r.get("message", "")]
    # Work-queue retention: every request acked is gone from the stream.
    assert worker.stop() == 0
    assert asyncio.run(stream_messages(nats_server.url)) == 0


async def stream_messages(url: str) -> int:
    nc = await connect(url)
    try:
        return int((await nc.jetstream().stream_info(STREAM)).state.messages)
    finally:
        await nc.close()


def test_a_bad_request_is_terminated_with_its_reason_logged(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    agents = write_agents(tmp_path / "agents", "sleeper")
    worker = join(workers, agents, sock_home, nats_server.url)

    async def publish_bad() -> None:
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.publish(subject("sleeper"), b"{not json", stream=STREAM)
            body = json.dumps({"session_id": "x1", "agent": "other"}).encode()
            await js.publish(subject("sleeper"), body, stream=STREAM)
        finally:
            await nc.close()

    asyncio.run(publish_bad())
    worker.wait_for_log("request terminated", count=2)
    messages = [r["message"] for r in worker.records() if "request terminated" in r.get("message", "")]
    assert any("not JSON" in m for m in messages) and any("'other'" in m for m in messages)
    assert asyncio.run(stream_messages(nats_server.url)) == 0  # terminated: gone, not redelivered


def test_drain_hands_the_running_sessions_over(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    agents = write_agents(tmp_path / "agents", "sleeper")
    first = join(workers, agents, sock_home, nats_server.url, "--max-sessions", "3", "--drain-timeout", "0.5")
    ids = asyncio.run(dispatch_many(nats_server.url, "sleeper", 3, seconds=3.0))
    first.wait_for_log("session started", count=3)
    assert first.stop(signal.SIGTERM) == 0
    second = fleet_worker(agents, sock_home, nats_server.url, "--max-sessions", "3")
    workers.append(second)
    events = wait_for_ends(nats_server.url, ids)
    requeued = [e for e in events if e.state == "requeued"]
    assert {e.session_id for e in requeued} == set(ids)
    assert {e.reason for e in requeued} == {"drain_timeout"}
    finals = [e for e in events if e.final]
    assert sorted(e.session_id for e in finals) == sorted(ids)
    assert {(e.state, e.attempt) for e in finals} == {("ended", 2)}
    assert {e.worker_id for e in finals}.isdisjoint({e.worker_id for e in requeued})


def test_a_killed_workers_sessions_finish_elsewhere_and_none_twice(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    """1,000 sessions on three workers; one is killed with `kill -9` mid-run. Every session id reaches
    exactly one final end state: the killed worker's running ones are delivered again (after the ack
    wait) and finish on the others."""
    agents = write_agents(tmp_path / "agents", "sleeper")
    flags = ("--max-sessions", "40", "--ack-wait", "2")
    fleet = [fleet_worker(agents, sock_home, nats_server.url, *flags) for _ in range(3)]
    workers.extend(fleet)
    for worker in fleet:
        worker.wait_for_log("fleet: joined")
    ids = asyncio.run(dispatch_many(nats_server.url, "sleeper", 1000, seconds=0.3))
    victim = fleet[1]
    victim.wait_for_log("session started", count=60)
    victim.kill()
    events = wait_for_ends(nats_server.url, ids, timeout=120)

    finals = collections.Counter(e.session_id for e in events if e.final)
    assert set(finals) == set(ids), f"{len(set(ids) - set(finals))} sessions never ended"
    assert set(finals.values()) == {1}, [i for i, n in finals.items() if n > 1][:10]
    assert {e.state for e in events if e.final} == {"ended"}
    joined = victim.wait_for_log("fleet: joined")[0]["message"]
    victim_id = joined.split(" as worker ")[1].split()[0]
    assert any(e.worker_id == victim_id and e.state == "running" for e in events)
    final = {e.session_id: e for e in events if e.final}
    cut_short = {e.session_id for e in events if e.worker_id == victim_id and e.state == "running"}
    cut_short -= {i for i, e in final.items() if e.worker_id == victim_id}
    assert cut_short, "the killed worker had sessions running when it died"
    for session_id in cut_short:  # delivered again, and finished by another worker
        assert final[session_id].worker_id != victim_id and final[session_id].attempt > 1
    for worker in (fleet[0], fleet[2]):
        assert worker.stop() == 0


AGENTS["talker"] = """
    import asyncio
    from openrtc import Agent, Session

    class Talker(Agent):
        name = "talker"

        async def run(self, session: Session) -> None:
            await asyncio.sleep(0.05)
"""


def test_dispatch_wait_prints_each_end_state(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    agents = write_agents(tmp_path / "agents", "sleeper")
    join(workers, agents, sock_home, nats_server.url)
    url = nats_server.url
    ok = run_cli(
        "dispatch", "sleeper", "--nats", url, "--count", "3", "--wait", "--metadata", '{"seconds": 0.1}'
    )
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.split("\n")[:-1]
    assert len(lines) == 3 and all(" ended on worker " in line for line in lines)
    bad = run_cli("dispatch", "sleeper", "--nats", url, "--wait", "--metadata", '{"fail": true}')
    assert bad.returncode == 1 and " failed exception on worker " in bad.stdout, (bad.stdout, bad.stderr)
    plain = run_cli("dispatch", "sleeper", "--nats", url)
    assert plain.returncode == 0 and len(plain.stdout.split()) == 1
    usage = run_cli("dispatch", "sleeper", "--wait")
    assert usage.returncode == 2 and "--wait needs --nats" in usage.stderr
    nobody = run_cli("dispatch", "sleeper", "--nats", "nats://127.0.0.1:9")
    assert nobody.returncode == 1 and "no NATS server answers" in nobody.stderr


def test_an_agent_goes_only_to_the_workers_that_have_it(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    both = write_agents(tmp_path / "both", "sleeper", "talker")
    one = write_agents(tmp_path / "one", "sleeper")
    a = fleet_worker(both, sock_home, nats_server.url, "--max-sessions", "5")
    b = fleet_worker(one, sock_home, nats_server.url, "--max-sessions", "5")
    workers.extend([a, b])
    a_id = a.wait_for_log("fleet: joined")[0]["message"].split(" as worker ")[1].split()[0]
    b.wait_for_log("fleet: joined")
    talks = asyncio.run(dispatch_many(nats_server.url, "talker", 20))
    sleeps = asyncio.run(dispatch_many(nats_server.url, "sleeper", 20, seconds=0.1))
    events = wait_for_ends(nats_server.url, talks + sleeps)
    finals = {e.session_id: e for e in events if e.final}
    assert {finals[i].worker_id for i in talks} == {a_id}
    assert len({finals[i].worker_id for i in sleeps}) == 2  # both took sleepers


def test_caps_hold_under_a_burst(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    agents = write_agents(tmp_path / "agents", "sleeper")
    caps = (2, 5, 9)
    fleet = [fleet_worker(agents, sock_home, nats_server.url, "--max-sessions", str(c)) for c in caps]
    workers.extend(fleet)
    ids_of = [w.wait_for_log("fleet: joined")[0]["message"].split(" as worker ")[1].split()[0] for w in fleet]
    ids = asyncio.run(dispatch_many(nats_server.url, "sleeper", 300, seconds=0.05))
    events = wait_for_ends(nats_server.url, ids)
    assert len({e.session_id for e in events if e.final}) == 300
    for worker, worker_id, cap in zip(fleet, ids_of, caps, strict=True):
        assert max_concurrent(events, worker_id) <= cap, (worker_id, cap)
        assert not [r for r in worker.records() if "refused here" in r.get("message", "")]


def test_a_nats_restart_loses_nothing(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    """Sessions running while the server restarts end once, and requests sent after it are taken."""
    agents = write_agents(tmp_path / "agents", "sleeper")
    worker = join(workers, agents, sock_home, nats_server.url, "--max-sessions", "20")
    before = asyncio.run(dispatch_many(nats_server.url, "sleeper", 10, seconds=2.0))
    worker.wait_for_log("session started", count=10)
    port = nats_server.port
    nats_server.stop()
    worker.wait_for_log("disconnected from NATS")
    nats_server.start(port=port)
    worker.wait_for_log("reconnected to NATS")
    after = asyncio.run(dispatch_many(nats_server.url, "sleeper", 10, seconds=0.1))
    events = wait_for_ends(nats_server.url, before + after)
    finals = collections.Counter(e.session_id for e in events if e.final)
    assert set(finals) == set(before + after) and set(finals.values()) == {1}
    assert {e.attempt for e in events if e.final} == {1}  # nothing ran twice
    assert worker.proc.poll() is None


def test_a_request_past_max_deliver_is_reported_lost(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    """A request every taker drops (here a client that fetches and never acks, as a worker that keeps
    dying would) is reported by a live worker once the server gives up on it."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from openrtc.fleet.protocol import durable

    agents = write_agents(tmp_path / "agents", "talker")
    worker = join(workers, agents, sock_home, nats_server.url)

    async def drop_twice() -> str:
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            config = ConsumerConfig(
                durable_name=durable("sleeper"),
                filter_subject=subject("sleeper"),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=1.0,
                max_deliver=2,
            )
            await js.add_consumer(STREAM, config)
            session_id = (await publish(js, "sleeper")).session_id
            sub = await js.pull_subscribe_bind(durable("sleeper"), STREAM)
            for attempt in (1, 2):
                (msg,) = await sub.fetch(1, timeout=5)
                assert msg.metadata.num_delivered == attempt
            # The server gives up when it would deliver a third time, which a pull request asks for.
            with pytest.raises(nats.errors.TimeoutError):
                await sub.fetch(1, timeout=2.5)
            return session_id
        finally:
            await nc.close()

    session_id = asyncio.run(drop_twice())
    (record,) = worker.wait_for_log("lost (max_deliver)")
    assert session_id in record["message"] and record["level"] == "error"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lost = [e for e in asyncio.run(read_events(nats_server.url)) if e.state == "lost"]
        if lost:
            break
        time.sleep(0.2)
    assert [(e.session_id, e.reason) for e in lost] == [(session_id, "max_deliver")]


def test_top_once_nats_lists_every_worker_and_marks_a_dead_one_stale(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    from openrtc.fleet.view import cancel_session, read_fleet
    from openrtc.top.fleet import FleetSource

    agents = write_agents(tmp_path / "agents", "sleeper")
    fleet = [fleet_worker(agents, sock_home, nats_server.url, "--max-sessions", "2") for _ in range(3)]
    workers.extend(fleet)
    for worker in fleet:
        worker.wait_for_log("fleet: joined")
    ids = asyncio.run(dispatch_many(nats_server.url, "sleeper", 6, seconds=30))
    pids = {w.proc.pid for w in fleet}

    def once(*flags: str) -> Any:
        deadline = time.monotonic() + 15
        while True:
            done = run_cli("top", "--once", "--nats", nats_server.url, *flags)
            if done.returncode == 0:
                docs = json.loads(done.stdout) if "--json" in flags else done.stdout
                if (
                    "--json" not in flags
                    or sum(len(d["sessions"]) for d in docs) == 6
                    or time.monotonic() > deadline
                ):
                    return docs
            elif time.monotonic() > deadline:
                raise AssertionError(done.stderr)
            time.sleep(0.3)

    docs = once("--json")
    assert {d["worker"]["pid"] for d in docs} == pids
    assert sorted(r["session_id"] for d in docs for r in d["sessions"]) == sorted(ids)
    assert all(d["fleet"]["stale"] is False for d in docs)
    # Each worker puts the first VIEW_ROWS of its sessions, and counts them all.
    assert all(d["selection"]["limit"] == VIEW_ROWS for d in docs)
    assert sum(d["selection"]["total"] for d in docs) == len(ids)
    text = once()
    assert all(f":{pid}  up " in text for pid in pids) and "STALE" not in text

    # Cancel one session from outside its host, through its worker's control subject.
    doc = docs[0]
    target = doc["sessions"][0]["session_id"]

    async def cancel() -> list[bool]:
        nc = await connect(nats_server.url)
        try:
            return [
                await cancel_session(nc, doc["fleet"]["worker_id"], target),
                await cancel_session(nc, doc["fleet"]["worker_id"], "nosuchsession"),
            ]
        finally:
            await nc.close()

    assert asyncio.run(cancel()) == [True, False]
    events = wait_for_ends(nats_server.url, [target])
    assert [(e.state, e.reason) for e in events if e.final] == [("cancelled", "cancelled_by_user")]

    victim = next(w for w in fleet if w.proc.pid == docs[1]["worker"]["pid"])
    victim.kill()

    async def stale_one() -> list[Any]:
        nc = await connect(nats_server.url)
        try:
            return await read_fleet(nc)
        finally:
            await nc.close()

    deadline = time.monotonic() + 9  # before the bucket's 10 s expiry
    while time.monotonic() < deadline:
        seen = asyncio.run(stale_one())
        if any(w.stale for w in seen):
            break
        time.sleep(0.3)
    assert [w.doc["worker"]["pid"] for w in seen if w.stale] == [victim.proc.pid]
    assert "STALE worker " in once()
    # The live view's source: every worker, the dead one marked gone with why.
    source = FleetSource(nats_server.url)
    try:
        fetch = source.fetch()
    finally:
        source.close()
    assert fetch.fleet == nats_server.url
    assert {v.snapshot.worker.pid for v in fetch.workers if v.snapshot is not None} == pids
    (gone,) = [v for v in fetch.workers if v.gone]
    assert gone.snapshot is not None and gone.snapshot.worker.pid == victim.proc.pid
    assert gone.error is not None and "no update for" in gone.error


AGENTS["caller"] = """
    import asyncio
    from openrtc import Agent, Session

    class Caller(Agent):
        name = "caller"

        async def run(self, session: Session) -> None:
            n = int(session.metadata.get("n", 1))
            for _ in range(n):
                session.usage.record(
                    "gpt-4o-mini", provider="openai", input_tokens=1000 * n, output_tokens=100 * n,
                    cache_read_tokens=200 * n,
                )
                await asyncio.sleep(0.01)
"""


def test_stats_nats_totals_equal_the_sum_of_the_workers_logs(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    agents = write_agents(tmp_path / "agents", "caller")
    logs = [tmp_path / f"log{i}" for i in range(3)]
    fleet = [
        Worker(
            "start", agents, sock_home, "--nats", nats_server.url, "--log-dir", str(d), "--max-sessions", "4"
        ).ready()
        for d in logs
    ]
    workers.extend(fleet)
    for worker in fleet:
        worker.wait_for_log("fleet: joined")
    ids = []
    for n in (1, 2, 3):
        ids += asyncio.run(dispatch_many(nats_server.url, "caller", 10, n=n))
    events = wait_for_ends(nats_server.url, ids)
    assert len({e.worker_id for e in events if e.final}) == 3  # every worker took some
    for worker in fleet:
        assert worker.stop() == 0  # each log complete and closed

    def usage(*where: str) -> dict[str, Any]:
        done = run_cli("stats", "usage", "--json", *where)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout)["total"])

    fleet_total = usage("--nats", nats_server.url)
    local = [usage("--log-dir", str(d)) for d in logs]
    for key in (
        "sessions",
        "calls",
        "input_tokens",
        "cache_read_tokens",
        "output_tokens",
        "unknown_cost_calls",
    ):
        assert fleet_total[key] == sum(t[key] for t in local), key
    assert fleet_total["sessions"] == 30 and fleet_total["calls"] == 60
    assert fleet_total["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in local))
    assert fleet_total["cost_usd"] > 0
    history = run_cli("stats", "history", "--nats", nats_server.url, "--limit", "100", "--ids")
    assert sorted(history.stdout.split()) == sorted(ids)
    nothing = run_cli("stats", "usage", "--nats", nats_server.url, "--since", "2001-01-01..2001-01-02")
    assert nothing.returncode == 1 and f"in the fleet at {nats_server.url}" in nothing.stderr


def test_every_agent_gets_a_turn_with_fewer_slots_than_agents(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    """One slot, three agents: no agent's fetcher keeps the slot from the others (they take turns)."""
    agents = write_agents(tmp_path / "agents", "sleeper", "talker", "caller")
    join(workers, agents, sock_home, nats_server.url, "--max-sessions", "1")
    ids = []
    for agent in ("talker", "caller", "sleeper"):
        ids += asyncio.run(dispatch_many(nats_server.url, agent, 2, seconds=0.05))
    events = wait_for_ends(nats_server.url, ids, timeout=60)
    assert sorted(e.session_id for e in events if e.final) == sorted(ids)
    (worker_id,) = {e.worker_id for e in events}
    assert max_concurrent(events, worker_id) == 1


def test_the_fleet_demo_runs_three_workers_and_stops_them(sock_home: Path) -> None:
    done = run_cli("demo", "--fleet", "--no-tui", "--duration", "6", timeout=90)
    assert done.returncode == 0, done.stderr
    assert "demo fleet: nats-server nats://127.0.0.1:" in done.stdout
    assert done.stdout.count("\nworker ") + done.stdout.startswith("worker ") >= 3, done.stdout
    assert "demo fleet stopped; workers exited with 0, 0, 0" in done.stdout
    assert " chat " in done.stdout  # the load reached the workers through the stream


def test_the_per_agent_cap_holds_without_refusals(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    agents = write_agents(tmp_path / "agents", "sleeper", "talker")
    worker = join(workers, agents, sock_home, nats_server.url, "--max-sessions-per-agent", "2")
    ids = asyncio.run(dispatch_many(nats_server.url, "sleeper", 10, seconds=0.2))
    events = wait_for_ends(nats_server.url, ids)
    (worker_id,) = {e.worker_id for e in events}
    assert max_concurrent(events, worker_id) <= 2
    assert not [r for r in worker.records() if "refused here" in r.get("message", "")]


def test_a_copy_superseded_by_a_later_delivery_is_cancelled(
    nats_server: NatsServer, tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    """A worker frozen past the ack wait (SIGSTOP: its in-progress acks cannot go out) loses the lease:
    the request is delivered again, to the other worker (and maybe once more to the frozen one's last
    open pull request). Whichever copy holds the older delivery is cancelled when it sees the newer
    start: one final end."""
    agents = write_agents(tmp_path / "agents", "sleeper")
    frozen = join(workers, agents, sock_home, nats_server.url, "--max-sessions", "1", "--ack-wait", "2")
    (session_id,) = asyncio.run(dispatch_many(nats_server.url, "sleeper", 1, seconds=6))
    frozen.wait_for_log("session started")
    # Its default ack wait (30 s) does not change the consumer the first worker made.
    other = fleet_worker(agents, sock_home, nats_server.url, "--max-sessions", "1")
    workers.append(other)
    other.wait_for_log("consumer openrtc-sleeper exists with ack wait 2 s and max deliver 5; shared as it is")
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        other.wait_for_log("session started", timeout=20)  # delivered again after the ack wait
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    # Whichever holds the newest delivery keeps the session; the other cancels its copy.
    deadline = time.monotonic() + 20
    while not any(
        "cancelling this copy" in r.get("message", "") for w in (frozen, other) for r in w.records()
    ):
        assert time.monotonic() < deadline, "no copy was cancelled"
        time.sleep(0.2)
    events = wait_for_ends(nats_server.url, [session_id])
    finals = [e for e in events if e.final]
    assert len(finals) == 1 and finals[0].attempt >= 2 and finals[0].state == "ended"
    assert other.proc.poll() is None
    assert frozen.proc.poll() is None
