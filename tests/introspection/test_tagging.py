"""The tag reaches every task a session spawns, whatever spawned it, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from openrtc import AgentPool, Session
from openrtc.introspection import timing
from openrtc.introspection.tagging import TaskTagger, live_tasks, session_of
from openrtc.runtime.session import current_session

POOL: list[AgentPool] = []


# Every test here runs with each step timer.
pytestmark = [
    pytest.mark.usefixtures("step_timer"),
    pytest.mark.parametrize("step_timer", ["c", "python"], indirect=True),
]


def _tagged(session: Session) -> bool:
    """True when the factory recorded the running task as the session's, in both of its records."""
    task = asyncio.current_task()
    assert task is not None
    # the parametrised step timer runs it (in Python whenever steps can nest)
    assert isinstance(task.get_coro(), (timing.ACTIVE.wrapper, timing.NestedTimedCoroutine))
    return task in session.tasks.values() and POOL[-1].session_of(task) is session


def _run_one_session(run_loop: Any, agent: Any) -> None:
    """One session of `agent` in a fresh pool, to its end; it must end cleanly."""

    async def main() -> None:
        async with AgentPool() as pool:
            POOL.append(pool)
            pool.add("a", agent)
            handle = await pool.start_session("a")
            assert await handle == "ended", handle.error

    run_loop(main())


async def _spawn_everything(session: Session) -> dict[str, bool]:
    seen: dict[str, bool] = {}

    async def probe(label: str) -> str:
        await asyncio.sleep(0)
        seen[label] = _tagged(session)
        return label

    seen["root"] = _tagged(session)
    await asyncio.create_task(probe("create_task"))
    await asyncio.gather(probe("gather"))
    await asyncio.wait_for(probe("wait_for"), timeout=5)
    await asyncio.shield(probe("shield"))
    await asyncio.wait([asyncio.ensure_future(probe("wait"))])
    for fut in asyncio.as_completed([probe("as_completed")]):
        await fut
    async with asyncio.TaskGroup() as tg:
        tg.create_task(probe("task_group"))

    loop = asyncio.get_running_loop()
    from_callback: asyncio.Future[asyncio.Task[str]] = loop.create_future()
    loop.call_soon(lambda: from_callback.set_result(loop.create_task(probe("call_soon"))))
    await (await from_callback)
    later: asyncio.Future[asyncio.Task[str]] = loop.create_future()
    loop.call_later(0.001, lambda: later.set_result(asyncio.ensure_future(probe("call_later"))))
    await (await later)
    return seen


MECHANISMS = {
    "root",
    "create_task",
    "gather",
    "wait_for",
    "shield",
    "wait",
    "as_completed",
    "task_group",
    "call_soon",
    "call_later",
}


def test_tag_reaches_every_spawned_task(run_loop: Any) -> None:
    results: dict[str, bool] = {}

    async def agent(session: Session) -> None:
        results.update(await _spawn_everything(session))

    _run_one_session(run_loop, agent)
    assert set(results) == MECHANISMS
    assert all(results.values()), results


def test_tasks_of_two_sessions_stay_apart(run_loop: Any) -> None:
    owners: dict[str, set[str]] = {}

    async def agent(session: Session) -> None:
        async def child() -> None:
            await asyncio.sleep(0.01)
            current = current_session.get()
            assert current is not None
            owners.setdefault(session.id, set()).add(current.id)

        await asyncio.gather(*(child() for _ in range(5)))

    async def main() -> None:
        async with AgentPool() as pool:
            POOL.append(pool)
            pool.add("a", agent)
            handles = [await pool.start_session("a") for _ in range(10)]
            await asyncio.gather(*(h.wait() for h in handles))

    run_loop(main())
    assert len(owners) == 10
    assert all(seen == {sid} for sid, seen in owners.items())


def test_live_task_count_drops_when_tasks_finish(run_loop: Any) -> None:
    async def agent(session: Session) -> None:
        release = asyncio.Event()
        children = [asyncio.create_task(release.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        assert live_tasks(session) == 4  # root + 3
        release.set()
        await asyncio.gather(*children)
        assert live_tasks(session) == 1

    _run_one_session(run_loop, agent)


def test_a_task_leaves_the_session_however_it_ends(run_loop: Any) -> None:
    """Returned, raised, cancelled while waiting, cancelled before its first step, finished eagerly
    (3.12+): the session's `tasks` keeps none of them, so finished tasks are never kept alive."""
    left: list[int] = []

    async def agent(session: Session) -> None:
        async def returns() -> int:
            await asyncio.sleep(0)
            return 1

        async def raises() -> None:
            await asyncio.sleep(0)
            raise ValueError("boom")

        async def waits() -> None:
            await asyncio.Event().wait()

        done = asyncio.create_task(returns())
        failed = asyncio.create_task(raises())
        waiting = asyncio.create_task(waits())
        never_ran = asyncio.create_task(waits())
        never_ran.cancel()
        await asyncio.sleep(0)
        assert never_ran.cancelled()  # its first step was the cancellation: gone already
        assert set(session.tasks.values()) == {asyncio.current_task(), done, failed, waiting}
        waiting.cancel()
        await asyncio.gather(done, failed, waiting, never_ran, return_exceptions=True)
        left.append(len(session.tasks))
        assert list(session.tasks.values()) == [asyncio.current_task()]

    _run_one_session(run_loop, agent)
    assert left == [1]


def test_a_tagged_task_still_shows_its_own_coroutine(run_loop: Any) -> None:
    """asyncio's repr and stack of a session task name the session's coroutine, not the step wrapper."""
    seen: dict[str, Any] = {}

    async def agent(session: Session) -> None:
        async def fetch_weather() -> None:
            await asyncio.sleep(0.05)

        child = asyncio.create_task(fetch_weather())
        await asyncio.sleep(0)
        seen["repr"] = repr(child)
        seen["stack"] = [frame.f_code.co_name for frame in child.get_stack()]
        await child

    _run_one_session(run_loop, agent)
    assert "fetch_weather" in seen["repr"], seen["repr"]
    assert seen["stack"] == ["fetch_weather"]


def test_chains_to_previous_factory_and_restores_it(run_loop: Any) -> None:
    calls: list[str] = []

    def previous(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        calls.append("previous")
        return asyncio.Task(coro, loop=loop, **kwargs)

    tagged: list[bool] = []

    async def agent(session: Session) -> None:
        async def child() -> None:
            tagged.append(_tagged(session))

        await asyncio.create_task(child())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(previous)
        async with AgentPool() as pool:
            POOL.append(pool)
            assert loop.get_task_factory() is not previous
            pool.add("a", agent)
            await (await pool.start_session("a"))
        assert loop.get_task_factory() is previous

    run_loop(main())
    assert tagged == [True]
    assert calls.count("previous") >= 2  # the root task and its child went through the old factory


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks arrived in Python 3.12")
def test_works_on_top_of_the_eager_task_factory(run_loop: Any) -> None:
    tagged: list[bool] = []

    async def agent(session: Session) -> None:
        async def child() -> None:
            tagged.append(current_session.get() is session)
            await asyncio.sleep(0)
            tagged.append(_tagged(session))

        await asyncio.create_task(child())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        probe = asyncio.sleep(0)
        try:
            await asyncio.create_task(probe)
        except TypeError as exc:
            probe.close()  # e.g. uvloop 0.23 on Python 3.13.0 passes eager_start= to the factory
            loop.set_task_factory(None)
            pytest.skip(f"this loop cannot run asyncio.eager_task_factory even without openrtc: {exc}")
        async with AgentPool() as pool:
            POOL.append(pool)
            pool.add("a", agent)
            await (await pool.start_session("a"))
        assert loop.get_task_factory() is asyncio.eager_task_factory  # type: ignore[attr-defined]

    run_loop(main())
    assert tagged == [True, True]


def test_tagger_reads_the_context_argument(run_loop: Any) -> None:
    """uvloop always passes `context=`; the tag must come from that context, not the caller's."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tagger = TaskTagger(timing.ACTIVE.clock(float("inf"), lambda *_: None))
        tagger.install(loop)
        try:
            draining = asyncio.Event()
            session = Session("s1", "a", None, {}, {}, draining)
            session.stats = timing.ACTIVE.stats(session)
            import contextvars

            ctx = contextvars.copy_context()
            ctx.run(current_session.set, session)

            async def nothing() -> None:
                await asyncio.sleep(0)

            task = loop.create_task(nothing(), context=ctx)
            assert task in session.tasks.values()
            assert session_of(task, {session.id: session}) is session
            untagged = loop.create_task(nothing())
            assert untagged not in session.tasks.values()
            await asyncio.gather(task, untagged)
        finally:
            tagger.uninstall()
        assert loop.get_task_factory() is None

    run_loop(main())


def test_finished_tasks_do_not_accumulate(run_loop: Any) -> None:
    """A long session that spawns a task per frame keeps no finished task alive."""
    sizes: list[int] = []

    async def agent(session: Session) -> None:
        async def frame() -> None:
            return None

        for _ in range(5000):
            await asyncio.create_task(frame())
            sizes.append(len(session.tasks))

    async def main() -> None:
        async with AgentPool() as pool:
            pool.add("frames", agent)
            await (await pool.start_session("frames"))

    run_loop(main())
    assert max(sizes) == 1  # the root: each frame's task is gone once its coroutine has returned


def test_the_common_call_is_served_in_c_and_every_other_by_the_python_factory(
    run_loop: Any, step_timer: timing.StepTimer
) -> None:
    """With the C step timer the installed factory is `_steps.TaskFactory`: `(loop, coro)` and
    `(loop, coro, context=ctx)` are tagged in C; a call with other keywords goes to the Python factory,
    with the same outcome; a task of no session is left alone."""
    import contextvars

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tagger = TaskTagger(step_timer.clock(float("inf"), lambda *_: None))
        tagger.install(loop)
        factory = loop.get_task_factory()
        try:
            in_c = step_timer is timing.NATIVE
            assert (type(factory) is timing.NATIVE_FACTORY) == in_c
            session = Session("s1", "a", None, {}, {}, asyncio.Event())
            session.stats = step_timer.stats(session)
            ctx = contextvars.copy_context()
            ctx.run(current_session.set, session)

            async def nothing() -> str:
                await asyncio.sleep(0)
                return "done"

            coros = [nothing(), nothing(), nothing()]
            tasks = [
                factory(loop, coros[0], context=ctx),  # uvloop's call
                ctx.run(factory, loop, coros[1]),  # asyncio's: the current context
                factory(loop, coros[2], context=ctx, name="named"),  # to the Python factory
            ]
            for coro, task in zip(coros, tasks, strict=True):
                assert session.tasks[coro] is task
                assert isinstance(task.get_coro(), step_timer.wrapper)
            assert tasks[2].get_name() == "named"
            plain = nothing()
            untagged = factory(loop, plain)  # no session in this context
            assert untagged.get_coro() is plain
            assert await asyncio.gather(*tasks, untagged) == ["done"] * 4
            assert session.tasks == {}  # each left the session when it ended
            assert session.stats.busy_s > 0
            with pytest.raises(TypeError):
                factory(loop)
        finally:
            tagger.uninstall()

    run_loop(main())
