"""Log set-up for the CLI: text or JSON lines on stderr, every record stamped with its session."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from openrtc.runtime.session import current_session

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SessionContextFilter(logging.Filter):
    """Adds `session_id` and `agent` to records made inside a session's context ("-" outside one).

    Logging is synchronous, so the filter runs in the context of the code that logged: any logger used
    from session code, not only `session.log`, gets the session's id.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session_id"):
            session = current_session.get()
            record.session_id = session.id if session is not None else "-"
            record.agent = session.agent if session is not None else "-"
        elif not hasattr(record, "agent"):
            record.agent = "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, session_id, agent, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "session_id": getattr(record, "session_id", "-"),
            "agent": getattr(record, "agent", "-"),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(session_id)s %(agent)s] %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"


def configure_logging(level: str = "info", fmt: str = "text") -> logging.Handler:
    """Send `openrtc` and root logs to stderr in `fmt`; returns the handler installed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SessionContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler
