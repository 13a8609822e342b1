"""The ledger of a worker's live sessions, a file next to its socket: what is left to tell when the
worker dies without draining (`kill -9`, `os._exit` in a session, a crash in a C extension).

`<name>.sessions` beside `<name>.sock`, mode 0600, append-only text: `+ ID AGENT TENANT STARTED_AT` when
a session starts, `- ID` when it ends. A worker that exits cleanly removes it with its socket. One whose
socket no longer answers but whose ledger remains died: the sessions started and not ended in it were
lost. The next worker to start in the folder logs each of them as `session lost reason=worker_died`
and removes the ledger; `openrtc top` reports them until then.

The loop thread only appends to a deque; the socket server's thread writes the lines, woken when the
first line of a batch arrives (a line is on disk within a few milliseconds of the session's start,
unless the server thread is starved). Written with plain `write`: the lines outlive the process (they
are in the kernel's page cache), not a crash of the machine.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from openrtc.introspection.paths import is_alive

log = logging.getLogger("openrtc.ledger")

SUFFIX = ".sessions"


@dataclass(frozen=True)
class LostSession:
    """A session a dead worker had started and not ended."""

    session_id: str
    """Its id."""
    agent: str
    """Its agent."""
    tenant: str | None
    """Its tenant, or None."""
    started_at: float
    """Unix time it started."""


def parse_ledger(text: str) -> list[LostSession]:
    """The sessions started and not ended, in start order. Pure; a torn or foreign line is skipped."""
    live: dict[str, LostSession] = {}
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) == 5 and parts[0] == "+":
            try:
                started = float(parts[4])
            except ValueError:
                continue
            tenant = None if parts[3] == "-" else parts[3]
            live[parts[1]] = LostSession(parts[1], parts[2], tenant, started)
        elif len(parts) == 2 and parts[0] == "-":
            live.pop(parts[1], None)
    return list(live.values())


def _token(text: str | None) -> str:
    """One field of a line: no spaces or line breaks (agent and tenant names are the user's)."""
    return "-" if not text else "".join("_" if c.isspace() else c for c in text)


class LedgerWriter:
    """Appends a worker's session starts and ends to its ledger (see the module)."""

    def __init__(self, folder_fd: int, name: str, wake: Callable[[], None]) -> None:
        self._fd = folder_fd
        self.name = name
        self._wake = wake
        self._lines: collections.deque[str] = collections.deque()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        self._file = os.open(name, flags, 0o600, dir_fd=folder_fd)
        self.errors = 0

    def started(self, session_id: str, agent: str, tenant: str | None) -> None:
        """Loop thread: one deque append (and a wake-up for the first line of a batch)."""
        first = not self._lines
        self._lines.append(f"+ {session_id} {_token(agent)} {_token(tenant)} {time.time():.3f}\n")
        if first:
            self._wake()

    def ended(self, session_id: str) -> None:
        first = not self._lines
        self._lines.append(f"- {session_id}\n")
        if first:
            self._wake()

    def flush(self) -> None:
        """Server thread: write what the loop queued."""
        lines = []
        while self._lines:
            lines.append(self._lines.popleft())
        if not lines:
            return
        try:
            os.write(self._file, "".join(lines).encode())
        except OSError as exc:
            self.errors += 1
            log.warning("could not write the session ledger: %s", exc)

    def remove(self) -> None:
        """The worker ends cleanly (or has written every end line itself): nothing is lost."""
        with contextlib.suppress(OSError):
            os.close(self._file)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name, dir_fd=self._fd)


@dataclass(frozen=True)
class DeadWorker:
    """A worker whose ledger remains but whose socket no longer answers."""

    ledger: Path
    """Its ledger file."""
    name: str
    """Its socket's name without `.sock` (the pid, for the default name)."""
    lost: list[LostSession]
    """The sessions it had started and not ended."""

    def describe(self) -> str:
        ids = ", ".join(f"{s.session_id} ({s.agent})" for s in self.lost[:10])
        more = f" and {len(self.lost) - 10} more" if len(self.lost) > 10 else ""
        count = f"{len(self.lost)} session{'s' if len(self.lost) != 1 else ''} lost"
        return f"worker {self.name} exited without draining: {count}" + (f": {ids}{more}" if ids else "")


def dead_workers(folder: Path, alive: Collection[Path] = (), include_empty: bool = False) -> list[DeadWorker]:
    """The ledgers of `folder` whose worker is gone (its socket refuses connections or is missing) and
    lost sessions (any, with `include_empty`); sockets in `alive` just answered and are not probed."""
    found = []
    for ledger in sorted(folder.glob(f"*{SUFFIX}")):
        sock = ledger.with_suffix(".sock")
        if sock in alive or (sock.exists() and is_alive(sock)):
            continue
        try:
            text = ledger.read_text(errors="replace")
        except OSError:
            continue
        lost = parse_ledger(text)
        if lost or include_empty:
            found.append(DeadWorker(ledger, ledger.stem, lost))
    return found


def report_and_clear(folder: Path) -> int:
    """Log the sessions of every dead worker of `folder` as lost, one end line each, and remove their
    ledgers (a new worker does this at start). Returns how many sessions were reported."""
    count = 0
    for dead in dead_workers(folder, include_empty=True):
        if dead.lost:
            log.error("%s", dead.describe())
        for lost in dead.lost:
            logging.getLogger(f"openrtc.agent.{lost.agent}").error(
                "session lost reason=worker_died: worker %s exited without draining (the session started %s)",
                dead.name,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lost.started_at)),
                extra={"session_id": lost.session_id, "agent": lost.agent},
            )
        count += len(dead.lost)
        with contextlib.suppress(FileNotFoundError):
            dead.ledger.unlink()
        sock = dead.ledger.with_suffix(".sock")
        with contextlib.suppress(FileNotFoundError):
            if not is_alive(sock):
                sock.unlink()
    return count
