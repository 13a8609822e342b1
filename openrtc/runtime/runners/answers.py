"""What a session's own process answers when the worker asks (isolation="process"): plug-ins register
an answer from their `Hook.child_setup`. Its own module, not the template's: the template runs as
`__main__`, and a registry there would not be the one plug-ins import."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from openrtc.runtime.session import Session

Answer = Callable[[Session, dict[str, Any]], Awaitable[Any]]

answers: dict[str, Answer] = {}
"""`what` -> its answer, in this process."""


def answer(what: str, fn: Answer) -> None:
    """Answer the worker's `ask` of `what` with `await fn(session, payload)`, whose result must be plain
    values (it crosses the session's channel)."""
    answers[what] = fn
