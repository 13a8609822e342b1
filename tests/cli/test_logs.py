"""Log records from session code carry the session id and agent, whichever logger made them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from openrtc import AgentPool, Session
from openrtc.cli.logs import JsonFormatter, SessionContextFilter, TextFormatter, configure_logging


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(fmt: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SessionContextFilter())
    handler.setFormatter(fmt)
    return handler, stream


def test_any_logger_inside_a_session_is_stamped(run_loop: Any) -> None:
    handler, stream = capture(JsonFormatter())
    library = logging.getLogger("some.library")
    library.addHandler(handler)
    library.setLevel(logging.INFO)

    async def agent(session: Session) -> None:
        library.info("from a plain logger")
        await asyncio.create_task(asyncio.to_thread(lambda: None))
        library.info("after a child task")

    async def main() -> str:
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("talker", agent)
            handle = await pool.start_session("talker")
            await handle
            library.info("outside any session")
            return handle.id

    try:
        sid = run_loop(main())
    finally:
        library.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["message"], r["session_id"], r["agent"]) for r in lines] == [
        ("from a plain logger", sid, "talker"),
        ("after a child task", sid, "talker"),
        ("outside any session", "-", "-"),
    ]


def test_text_format_shows_session_and_agent() -> None:
    handler, stream = capture(TextFormatter())
    record = logging.LogRecord("openrtc.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    record.session_id, record.agent = "abc123", "support"
    handler.handle(record)
    assert stream.getvalue().rstrip().endswith("WARNING openrtc.x [abc123 support] hello you")


def test_configure_logging_installs_one_handler(restore_root_logging: None) -> None:
    configure_logging("debug", "json")
    root = logging.getLogger()
    assert len(root.handlers) == 1 and root.level == logging.DEBUG
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
