"""A worker in a fleet: the hook that takes session requests from NATS JetStream when the pool has room.

    pool = AgentPool(max_sessions=50, hooks=[FleetHook(FleetConfig("nats://127.0.0.1:4222"))])

The NATS client runs on a thread of its own with its own event loop (`openrtc-fleet`), never on the
pool's: a session that blocks the pool's loop must not stop the in-progress acks that keep its
request leased to this worker. It reaches the pool only through the control side and reads it
through its view, like the socket server.

For each agent the worker has, one durable pull consumer (`openrtc-<agent>`) shared by every worker
with that agent. A fetcher per agent asks for at most the slots the worker has free (its session cap
less its running sessions and the requests it is already starting; without a cap, `batch` at a
time), so a request waits in the stream, not in a worker that cannot run it. Then, per request:

- not a valid request, or for another agent: terminated (`term`), the reason logged;
- already ended (its key is in `openrtc_done`: a worker finished it and died before acking): acked;
- refused by the pool (a cap, the memory limit, a drain): nak'ed with a delay, for a worker with room;
- started: `running` is published, and an in-progress ack goes out every `ack_wait / 3` until the
  session ends; then its end is recorded in `openrtc_done` (the first worker to record it owns the
  session's one final event), published, and the request acked. A session cancelled by the drain's
  deadline is nak'ed instead (`requeued`), so another worker runs it.

A worker that dies stops acking: after `ack_wait` the server delivers the request again, to any
worker, up to `max_deliver` times; the server's advisory for a request that reached that limit is
logged and published as `lost` (reason `max_deliver`) by one worker of the fleet.

When a worker sees another one start a later delivery of a session it runs (its own in-progress acks
did not reach the server in time: the connection was down, or the process was starved), it cancels
its copy: an in-progress ack of a request already delivered again is not trusted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openrtc.errors import SessionRefused, UnknownAgentError
from openrtc.fleet.protocol import (
    ACK_WAIT_S,
    CONTROL_PREFIX,
    EVENTS_PREFIX,
    EVENTS_STREAM,
    MAX_DELIVER,
    STREAM,
    Event,
    FleetError,
    decode_event,
    decode_request,
    durable,
    event_subject,
    subject,
)
from openrtc.fleet.view import ViewWriter
from openrtc.runtime.hooks import Hook
from openrtc.usage.hook import end_record

if TYPE_CHECKING:
    from openrtc.runtime.control import PoolControl
    from openrtc.runtime.session import Session
    from openrtc.runtime.view import PoolView

log = logging.getLogger("openrtc.fleet")

FETCH_TIMEOUT_S = 1.0
"""A fetch's long poll: an empty stream costs one request a second per agent."""
BURST_S = 0.05
"""The longest a fetch after a fruitful one lingers for more."""
RETRY_S = 1.0
"""Pause after a failed fetch (the server is away): the client reconnects meanwhile."""
CLOSE_TIMEOUT_S = 5.0
"""How long the pool's close waits for the last acks and naks to reach the server."""
FLUSH_TIMEOUT_S = 2.0
ADVISORY_MAX_DELIVER = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + STREAM + ".*"


@dataclass(frozen=True)
class FleetConfig:
    """How a worker joins a fleet."""

    url: str
    """The NATS server (`nats://host:port`; several, comma-separated, for a cluster)."""
    ack_wait_s: float = ACK_WAIT_S
    """How long a request stays leased to a worker without an ack (the consumer's `ack_wait`)."""
    max_deliver: int = MAX_DELIVER
    """How many times a request is delivered before it is reported lost."""
    batch: int = 8
    """Requests fetched at a time by a worker without a session cap."""
    nak_delay_s: float = 1.0
    """How long a request refused here (a cap, the memory limit) waits before it is delivered again."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise FleetError(f"NATS URL {self.url!r}: expected nats://HOST:PORT")
        if self.ack_wait_s < 1:
            raise FleetError(f"ack wait {self.ack_wait_s} s: at least 1 s")
        if self.max_deliver < 1:
            raise FleetError(f"max deliver {self.max_deliver}: at least 1")


@dataclass
class _Lease:
    """A request this worker took: its message, until the session ends."""

    msg: Any
    agent: str
    attempt: int
    superseded: bool = False
    """Another worker started a later delivery: this copy ends without acking or publishing."""
    progress_ok: float = field(default_factory=time.monotonic)
    """When an in-progress ack (or the delivery) last went out on a live connection."""
    warned: bool = False
    ended: bool = False
    """The session ended; its end is being recorded (the lease is kept, and acked in progress, until
    the request is acked)."""


class FleetHook(Hook):
    """Joins the worker to a fleet (see the module)."""

    def __init__(self, config: FleetConfig, snapshot: Callable[[], dict[str, Any]] | None = None) -> None:
        try:
            import nats  # noqa: F401
        except ImportError:  # pragma: no cover - the fleet extra
            raise FleetError("the fleet needs nats-py: pip install 'openrtc[fleet]'") from None
        self.config = config
        self.snapshot = snapshot
        """The worker's snapshot (introspection's, callable from any thread), put into the fleet view
        every second; None: the worker is not in the view."""
        self._view: PoolView | None = None
        self._control: PoolControl | None = None
        self._worker_id = ""
        self._agents: tuple[str, ...] = ()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._leases: dict[str, _Lease] = {}
        """Requests taken and not yet ended, by session id (written on the fleet thread only)."""
        self._claimed = 0
        """Slots held by fetches in flight and sessions being started (not yet in the pool's count)."""
        self._claimed_for: collections.Counter[str] = collections.Counter()
        """The same, by agent (for the per-agent cap)."""
        self._fetching = True
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        """Fetchers waiting for their turn at a free slot, oldest first."""
        self._stop: asyncio.Event | None = None
        self._nc: Any = None
        self._js: Any = None
        self._done: Any = None
        self._view_writer: ViewWriter | None = None
        self._closing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        """Requests being taken, sessions' ends being recorded: what the close waits for."""
        self.counts: dict[str, int] = {"started": 0, "acked": 0, "requeued": 0, "terminated": 0, "refused": 0}
        """What this worker did with the requests it took (read from any thread)."""

    # -- the pool's side (loop thread) -----------------------------------------------------------

    def started(self, pool: PoolView) -> None:
        self._view = pool
        self._control = pool.control
        facts = pool.facts()
        self._worker_id = facts.worker_id
        self._agents = facts.agents
        self._thread = threading.Thread(target=self._run, name="openrtc-fleet", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def session_started(self, session: Session) -> None:
        if session.id in self._leases:
            self._call(self._on_started, session.id, session.attempt, time.time())

    def session_finished(self, session: Session) -> None:
        if session.id in self._leases:
            # The time is taken here, on the loop: the events' times then order starts and ends truly.
            summary = end_record(session, self._worker_id)
            self._call(
                self._on_finished, session.id, session.state.value, session.reason, time.time(), summary
            )

    def draining(self) -> None:
        self._call(self._stop_fetching)

    def closed(self) -> None:
        if self._thread is None:
            return
        self._call(self._close)
        self._thread.join(CLOSE_TIMEOUT_S + FLUSH_TIMEOUT_S + 1.0)
        if self._thread.is_alive():
            log.warning("the fleet's connection did not close in %.0f s", CLOSE_TIMEOUT_S)
        self._thread = None

    def emergency_exit(self) -> None:
        # The loop is stuck past the drain deadline and the process exits now: hand every request
        # back at once rather than leave each to its ack wait.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._requeue_all("drain_timeout"), loop).result(2.0)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    # -- the fleet thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("the fleet's thread failed: this worker takes no more requests")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        if not await self._connect():
            return
        tasks = [
            asyncio.create_task(self._fetch_loop(agent), name=f"fetch-{agent}") for agent in self._agents
        ]
        tasks.append(asyncio.create_task(self._progress_loop(), name="progress"))
        if self.snapshot is not None:
            self._view_writer = ViewWriter(self._js, self._worker_id, self.snapshot)
            tasks.append(asyncio.create_task(self._view_writer.run(), name="view"))
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Not `drain()`: with the server gone it leaves a failed gather behind (a logged traceback).
        if self._nc.is_connected:
            with contextlib.suppress(Exception):
                await self._nc.flush(FLUSH_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await self._nc.close()

    async def _connect(self) -> bool:
        """Connect (retrying until the pool closes), then set up streams, bucket and subscriptions."""
        import nats

        from openrtc.fleet.client import ensure_fleet

        assert self._stop is not None
        first = True
        while not self._stop.is_set():
            try:
                self._nc = await nats.connect(
                    servers=self.config.url.split(","),
                    name=f"openrtc-worker-{self._worker_id}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2.0,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                self._js = self._nc.jetstream()
                self._done = await ensure_fleet(self._js)
                for agent in self._agents:
                    await self._ensure_consumer(agent)
                await self._nc.subscribe(EVENTS_PREFIX + "*.running", cb=self._on_running_event)
                await self._nc.subscribe(CONTROL_PREFIX + self._worker_id, cb=self._on_control)
                await self._nc.subscribe(
                    ADVISORY_MAX_DELIVER, queue="openrtc-advisories", cb=self._on_max_deliver
                )
            except Exception as exc:
                if self._nc is not None:
                    with contextlib.suppress(Exception):
                        await self._nc.close()
                    self._nc = None
                if first:
                    log.error(
                        "fleet: cannot join at %s: %s: %s (retrying)",
                        self.config.url,
                        type(exc).__name__,
                        exc,
                    )
                    first = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), RETRY_S)
                continue
            log.info(
                "fleet: joined at %s as worker %s for agents %s",
                self.config.url,
                self._worker_id,
                ", ".join(self._agents) or "-",
            )
            return True
        return False

    async def _ensure_consumer(self, agent: str) -> None:
        """The agent's consumer: made with this worker's settings when missing; when another worker
        made it, shared as it is (JetStream would otherwise take a second `add` as an update, and the
        last worker started would set the fleet's ack wait)."""
        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        name = durable(agent)
        try:
            info = await self._js.consumer_info(STREAM, name)
        except NotFoundError:
            wanted = ConsumerConfig(
                durable_name=name,
                filter_subject=subject(agent),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.config.ack_wait_s,
                max_deliver=self.config.max_deliver,
                max_ack_pending=-1,
            )
            await self._js.add_consumer(STREAM, wanted)
            return
        have = (info.config.ack_wait, info.config.max_deliver)
        if have != (self.config.ack_wait_s, self.config.max_deliver):
            log.info(
                "fleet: consumer %s exists with ack wait %g s and max deliver %s; shared as it is",
                name,
                have[0],
                have[1],
            )

    async def _on_error(self, exc: BaseException) -> None:
        log.debug("fleet: nats: %s: %s", type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        if self._fetching or self._leases:  # not the worker's own close
            log.warning("fleet: disconnected from NATS; running sessions go on, reconnecting")

    async def _on_reconnected(self) -> None:
        log.warning("fleet: reconnected to NATS at %s; taking requests again", self._nc.connected_url.netloc)

    # -- taking requests -------------------------------------------------------------------------

    def _free_slots(self, agent: str) -> int:
        """What `agent`'s fetcher may claim: the worker's free slots under its session cap, its
        per-agent cap and its memory limit (a refusal would cost the request one of its deliveries)."""
        view = self._view
        assert view is not None
        if not self._fetching or view.memory_full:
            return 0
        facts = view.facts()
        if facts.draining:
            return 0
        if facts.max_sessions is None:
            free = self.config.batch - self._claimed
        else:
            free = facts.max_sessions - facts.sessions_active - self._claimed
        per_agent = view.config.limits.max_sessions_per_agent
        if per_agent is not None:
            running = sum(1 for s in view.sessions() if s.agent == agent)
            free = min(free, per_agent - running - self._claimed_for[agent])
        return max(0, free)

    async def _fetch_loop(self, agent: str) -> None:
        # nats-py's `fetch` returns at once what the stream has (up to the batch); on an empty stream it
        # lingers, and then holds the first request that comes until the batch is full or the timeout
        # ends. So: after an empty fetch, linger for one request only; after a fruitful one, take what
        # else is there, lingering at most BURST_S.
        sub = None
        idle = True
        while self._fetching:
            want = await self._turn(agent, 1 if idle else None)
            if want == 0:
                continue
            # With fewer free slots than agents, the agents take turns (`_turn`): each lingers for a
            # share of the timeout, so every agent is asked at least once a FETCH_TIMEOUT_S or so.
            linger = FETCH_TIMEOUT_S / (1 + len(self._waiting)) if idle else BURST_S
            got: list[Any] = []
            try:
                if sub is None:
                    sub = await self._js.pull_subscribe_bind(durable(agent), STREAM)
                got = await sub.fetch(want, timeout=max(0.1, linger))
            except asyncio.CancelledError:
                self._release(agent, want)
                raise
            except Exception as exc:
                if not _is_timeout(exc):
                    # The server went away, or the subscription no longer works after a restart
                    # (nats.py #504): a fresh one once the client has reconnected.
                    log.debug("fleet: fetch %s: %s: %s", agent, type(exc).__name__, exc)
                    if sub is not None:
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()
                    sub = None
                    self._release(agent, want)
                    await asyncio.sleep(RETRY_S)
                    continue
            # A fetch also returns what came in after an earlier one timed out (nats-py keeps it for
            # the next): more than asked for. What is past this worker's room goes straight back.
            extra = got[want:]
            got = got[:want]
            self._release(agent, want - len(got))
            idle = not got
            for msg in got:
                self._spawn(self._take(agent, msg))
            for msg in extra:
                self._spawn(self._give_back(msg))
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _turn(self, agent: str, at_most: int | None) -> int:
        """Claim free slots (at most `at_most`; None: all there are) when it is this fetcher's turn:
        first come, first served, so no agent's fetcher keeps the slots from the others. 0 when the
        worker stops fetching meanwhile."""
        first = True
        while self._fetching:
            free = self._free_slots(agent)
            if free > 0 and (not first or not self._waiting):
                n = free if at_most is None else min(free, at_most)
                self._claimed += n
                self._claimed_for[agent] += n
                return n
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            try:
                # Woken when a slot frees (or a turn passes); the timeout re-reads the pool's count.
                await asyncio.wait_for(asyncio.shield(turn), 0.5)
            except TimeoutError:
                pass
            finally:
                first = False
                with contextlib.suppress(ValueError):
                    self._waiting.remove(turn)
        return 0

    def _release(self, agent: str, slots: int) -> None:
        self._claimed -= slots
        self._claimed_for[agent] -= slots
        if slots:
            self._wake_fetchers()

    async def _give_back(self, msg: Any) -> None:
        try:
            await msg.nak()
        except Exception as exc:
            log.debug("fleet: request not given back (%s); after the ack wait", _describe(exc))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take(self, agent: str, msg: Any) -> None:
        """One delivered request (holding one claimed slot until the pool counts its session)."""
        assert self._control is not None
        try:
            attempt = int(msg.metadata.num_delivered)
            try:
                request = decode_request(msg.data)
                if request.agent != agent:
                    raise FleetError(f"request for agent {request.agent!r} on {agent!r}'s subject")
            except FleetError as exc:
                self.counts["terminated"] += 1
                log.error("fleet: request terminated (seq %s): %s", msg.metadata.sequence.stream, exc)
                await msg.term()
                return
            sid = request.session_id
            if not self._fetching:
                await msg.nak()
                return
            lease = self._leases.get(sid)
            if lease is not None:
                # Delivered again while it runs here (the acks were late): keep the session, ack the
                # newest delivery from now on, and say so, so that a worker that took an earlier
                # redelivery meanwhile cancels its copy (the newest delivery's holder keeps it).
                if not lease.superseded and attempt > lease.attempt:
                    lease.msg, lease.attempt, lease.progress_ok = msg, attempt, time.monotonic()
                    await msg.in_progress()
                    self._publish(self._event(sid, agent, "running", None, attempt))
                return
            ended = await self._ended(sid) if attempt > 1 else None
            if ended is not None:
                # It ended on a worker that died before acking: its end is published (again: the
                # events stream drops a second copy), and the request acked, not run again.
                log.info("fleet: session %s had ended before this delivery; acked, not run again", sid)
                await self._publish_end(ended)
                await msg.ack()
                return
            self._leases[sid] = _Lease(msg, agent, attempt)
            started = await asyncio.wrap_future(
                self._control.start_sessions(
                    agent,
                    tenant=request.tenant,
                    metadata=request.metadata,
                    session_ids=[sid],
                    attempt=attempt,
                )
            )
            if started.error is None:
                self.counts["started"] += 1
                return
            self._leases.pop(sid, None)
            if isinstance(started.error, UnknownAgentError):  # reloaded away meanwhile
                self.counts["terminated"] += 1
                log.error("fleet: request %s terminated: %s", sid, started.error)
                await msg.term()
            elif isinstance(started.error, SessionRefused):
                self.counts["refused"] += 1
                log.info("fleet: request %s refused here (%s); back to the stream", sid, started.error.reason)
                await msg.nak(delay=self.config.nak_delay_s)
        except Exception as exc:
            log.warning(
                "fleet: request not handled (%s: %s); it comes back after the ack wait",
                type(exc).__name__,
                exc,
            )
        finally:
            self._release(agent, 1)
            self._wake_fetchers()

    async def _ended(self, session_id: str) -> Event | None:
        """The end recorded for a session in `openrtc_done`, if any."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self._done.get(session_id)
        except KeyNotFoundError:
            return None
        try:
            return decode_event(entry.value or b"")
        except FleetError:
            return None

    async def _publish_end(self, event: Event) -> None:
        # One message id per session's end: the events stream keeps one copy, however many workers
        # publish it (within its duplicate window).
        await self._js.publish(
            event_subject(event.agent, event.state),
            event.encode(),
            stream=EVENTS_STREAM,
            headers={"Nats-Msg-Id": f"{event.session_id}.end"},
        )

    def _wake_fetchers(self) -> None:
        """A slot may have freed: the fetcher waiting longest takes its turn."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    # -- sessions' lives (callbacks posted from the pool's loop) -------------------------------------

    def _on_started(self, session_id: str, attempt: int, at: float) -> None:
        lease = self._leases.get(session_id)
        if lease is not None:
            self._publish(Event(session_id, lease.agent, self._worker_id, "running", None, at, attempt))

    def _on_finished(
        self, session_id: str, state: str, reason: str | None, at: float, summary: dict[str, Any] | None
    ) -> None:
        lease = self._leases.get(session_id)
        if lease is not None and not lease.ended:
            lease.ended = True
            self._spawn(self._finish(session_id, lease, state, reason, at, summary))
        self._wake_fetchers()

    async def _finish(
        self,
        session_id: str,
        lease: _Lease,
        state: str,
        reason: str | None,
        at: float,
        summary: dict[str, Any] | None = None,
    ) -> None:
        """Record, publish and ack a session's end; while NATS is away, retry (the lease stays, and its
        in-progress acks go on), so that a restart of the server loses no end and runs nothing twice."""
        try:
            if lease.superseded:
                return
            if state == "cancelled" and reason == "drain_timeout":
                await self._requeue(session_id, lease, reason)
                return
            event = Event(session_id, lease.agent, self._worker_id, state, reason, at, lease.attempt, summary)
            delay = 0.25
            while True:
                try:
                    await self._record_end(lease, event)
                    return
                except Exception as exc:
                    if delay == 0.25:
                        log.warning(
                            "fleet: session %s ended; recording its end: %s (retrying)",
                            session_id,
                            _describe(exc),
                        )
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
        finally:
            self._leases.pop(session_id, None)
            self._wake_fetchers()

    async def _record_end(self, lease: _Lease, event: Event) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            await self._done.create(event.session_id, event.encode())
            ours = True
        except KeyWrongLastSequenceError:
            recorded = await self._ended(event.session_id)
            # Ours when an earlier try of this very end got as far as the key.
            ours = recorded is not None and recorded.worker_id == self._worker_id
            if ours and recorded is not None:
                event = recorded
            else:
                log.warning(
                    "fleet: session %s had ended on another worker; this end not published", event.session_id
                )
                # Its request may be gone already (acked there): nothing to retry.
                with contextlib.suppress(Exception):
                    await lease.msg.ack()
                return
        await self._publish_end(event)
        await lease.msg.ack_sync()
        self.counts["acked"] += 1

    async def _requeue(self, session_id: str, lease: _Lease, reason: str) -> None:
        try:
            await lease.msg.nak()
            self.counts["requeued"] += 1
            log.info(
                "fleet: session %s requeued (%s): back in the stream for another worker", session_id, reason
            )
            self._publish(self._event(session_id, lease.agent, "requeued", reason, lease.attempt))
        except Exception as exc:
            log.warning(
                "fleet: session %s not handed back (%s); after the ack wait", session_id, _describe(exc)
            )

    async def _requeue_all(self, reason: str) -> None:
        leases = {sid: lease for sid, lease in self._leases.items() if not lease.ended}
        for sid in leases:
            del self._leases[sid]
        await asyncio.gather(*(self._requeue(sid, lease, reason) for sid, lease in leases.items()))
        with contextlib.suppress(Exception):
            await self._nc.flush(1.0)

    def _event(self, session_id: str, agent: str, state: str, reason: str | None, attempt: int) -> Event:
        return Event(session_id, agent, self._worker_id, state, reason, time.time(), attempt)

    def _publish(self, event: Event) -> None:
        async def send() -> None:
            try:
                await self._nc.publish(event_subject(event.agent, event.state), event.encode())
            except Exception as exc:
                log.debug("fleet: event not published: %s", exc)

        self._spawn(send())

    async def _progress_loop(self) -> None:
        every = self.config.ack_wait_s / 3
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            # While disconnected, nats-py buffers what is published: an ack "sent" then proves nothing.
            connected = self._nc.is_connected
            for sid, lease in list(self._leases.items()):
                if now - lease.progress_ok > self.config.ack_wait_s and not lease.warned:
                    lease.warned = True
                    log.warning(
                        "fleet: session %s: no in-progress ack reached NATS for %.0f s; its request may "
                        "run on another worker (this copy is then cancelled)",
                        sid,
                        now - lease.progress_ok,
                    )
                if not connected:
                    continue
                try:
                    await lease.msg.in_progress()
                except Exception as exc:
                    log.debug("fleet: in-progress ack of %s: %s", sid, _describe(exc))
                else:
                    lease.progress_ok = now

    async def _on_running_event(self, msg: Any) -> None:
        try:
            event = decode_event(msg.data)
        except FleetError:
            return
        lease = self._leases.get(event.session_id)
        if lease is None or event.worker_id == self._worker_id or event.attempt <= lease.attempt:
            return
        lease.superseded = True
        log.warning(
            "fleet: session %s runs again on worker %s (delivery %d); cancelling this copy (delivery %d)",
            event.session_id,
            event.worker_id,
            event.attempt,
            lease.attempt,
        )
        assert self._control is not None
        self._control.cancel(event.session_id, "redelivered")

    async def _on_max_deliver(self, msg: Any) -> None:
        try:
            doc = json.loads(msg.data)
            seq = int(doc["stream_seq"])
            agent = str(doc.get("consumer", "")).removeprefix("openrtc-")
        except (ValueError, KeyError, TypeError):
            return
        session_id = f"(stream seq {seq})"
        with contextlib.suppress(Exception):
            stored = await self._js.get_msg(STREAM, seq)
            session_id = decode_request(stored.data).session_id
        log.error(
            "fleet: session %s of agent %s was delivered %d times and never finished: lost (max_deliver)",
            session_id,
            agent,
            doc.get("deliveries", self.config.max_deliver),
        )
        with contextlib.suppress(Exception):
            event = Event(
                session_id,
                agent,
                self._worker_id,
                "lost",
                "max_deliver",
                time.time(),
                int(doc.get("deliveries", 0)),
            )
            await self._js.publish(event_subject(agent, "lost"), event.encode())

    # -- the fleet view and control ----------------------------------------------------------------

    async def _on_control(self, msg: Any) -> None:
        assert self._control is not None
        try:
            request = json.loads(msg.data)
            if request.get("op") != "cancel" or not isinstance(request.get("session_id"), str):
                raise ValueError('expected {"op": "cancel", "session_id": ...}')
            done = await asyncio.wrap_future(self._control.cancel(request["session_id"], "cancelled_by_user"))
            reply: dict[str, Any] = {"ok": True, "cancelled": done}
        except (ValueError, TypeError, AttributeError) as exc:
            reply = {"ok": False, "error": str(exc)}
        if msg.reply:
            await msg.respond(json.dumps(reply).encode())

    # -- stopping --------------------------------------------------------------------------------

    def _stop_fetching(self) -> None:
        self._fetching = False
        self._wake_fetchers()

    def _close(self) -> None:
        async def close() -> None:
            self._fetching = False
            if self._tasks:  # ends being recorded, requests being taken
                await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT_S)
            unfinished = {sid: lease for sid, lease in self._leases.items() if not lease.ended}
            if unfinished:  # taken, never started or never ended here: hand them back
                self._leases = {sid: lease for sid, lease in self._leases.items() if lease.ended}
                await asyncio.gather(
                    *(self._requeue(s, lease, "worker_closed") for s, lease in unfinished.items())
                )
            if self._leases:
                log.warning(
                    "fleet: %d ended sessions not acked (NATS unreachable): their requests come back "
                    "after the ack wait, and run again unless their end reached the bucket",
                    len(self._leases),
                )
            if self._view_writer is not None:  # out of the fleet view now, not at the bucket's expiry
                await self._view_writer.remove()
            assert self._stop is not None
            self._stop.set()

        self._closing = asyncio.create_task(close())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _is_timeout(exc: BaseException) -> bool:
    import nats.errors

    return isinstance(exc, (TimeoutError, nats.errors.TimeoutError))
