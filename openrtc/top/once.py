"""`openrtc top --once`: fetch one snapshot from each worker and print it, as text or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from openrtc.errors import OpenRTCError
from openrtc.introspection.client import WorkerClient, find_workers
from openrtc.introspection.ledger import dead_workers
from openrtc.introspection.paths import socket_dir
from openrtc.introspection.schema import Snapshot, from_dict, to_dict
from openrtc.introspection.selection import MAX_LIMIT, Filters, Selection
from openrtc.top.view import render_detail, render_text, worker_line

TABLE_LIMIT = 100
"""Rows per worker `top --once` prints as a table unless `--limit` says otherwise."""


def fetch_snapshots(
    socket: Path | None, timeout: float = 5.0, want: Selection | None = None
) -> list[Snapshot]:
    """One snapshot per live worker (or from `socket`), every session or those `want` asks for;
    raises `WorkerNotFound` when none answers."""
    paths = [socket] if socket is not None else [w.socket_path for w in find_workers(timeout=timeout)]
    snapshots = []
    for path in paths:
        with WorkerClient(path, timeout=timeout) as client:
            snapshots.append(client.snapshot(want))
    return snapshots


def once_selection(
    as_json: bool, filters: Filters, sort: str, limit: int | None, session: str | None
) -> Selection | None:
    """What `top --once` asks each worker for: the table's first `limit` rows (`TABLE_LIMIT` by default),
    JSON whole unless `limit` is given, one session by its id; None (every session) for `limit` 0."""
    if session is not None:  # the search narrows the rows to those the id prefix could be
        return Selection(sort, MAX_LIMIT, Filters(search=session))
    if limit == 0 or (limit is None and as_json):
        return None
    return Selection(sort, limit or TABLE_LIMIT, filters)


def run_once(
    socket: Path | None,
    as_json: bool,
    filters: Filters,
    sort: str,
    color: bool = False,
    session: str | None = None,
    limit: int | None = None,
) -> int:
    try:
        snapshots = fetch_snapshots(socket, want=once_selection(as_json, filters, sort, limit, session))
    except OpenRTCError as exc:
        _report_dead(socket)
        print(f"openrtc top: {exc}", file=sys.stderr)
        return 1
    _report_dead(socket)
    if session is not None:
        return _print_session(snapshots, session, as_json)
    if as_json:
        docs = [_filtered(to_dict(s), filters) for s in snapshots]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    else:
        sys.stdout.write(render_text(snapshots, filters, sort, color))
    return 0


def run_once_fleet(
    url: str,
    as_json: bool,
    filters: Filters,
    sort: str,
    color: bool = False,
    session: str | None = None,
) -> int:
    """`top --once --nats URL`: every worker of the fleet, from its view bucket. A worker whose snapshot
    is behind the fleet's newest by more than a few seconds is marked stale and its sessions not
    listed (it is stopping, stuck, or dead: its key expires 10 s after its last put)."""
    import asyncio

    from openrtc.fleet.client import connect
    from openrtc.fleet.view import FleetWorker, read_fleet

    async def read() -> list[FleetWorker]:
        nc = await connect(url, name="openrtc-top")
        try:
            return await read_fleet(nc)
        finally:
            await nc.close()

    try:
        workers = asyncio.run(read())
    except OpenRTCError as exc:
        print(f"openrtc top: {exc}", file=sys.stderr)
        return 1
    read_ok: list[tuple[FleetWorker, Snapshot]] = []
    for worker in workers:
        try:
            read_ok.append((worker, from_dict(worker.doc)))
        except OpenRTCError as exc:
            print(f"openrtc top: worker {worker.worker_id}: {exc}", file=sys.stderr)
    if not read_ok:
        print(f"openrtc top: no worker in the fleet at {url}", file=sys.stderr)
        return 1
    if session is not None:
        return _print_session([s for w, s in read_ok if not w.stale], session, as_json)
    if as_json:
        docs = []
        for worker, snapshot in read_ok:
            doc = _filtered(to_dict(snapshot), filters)
            doc["fleet"] = {"worker_id": worker.worker_id, "stale": worker.stale, "behind_s": worker.behind_s}
            docs.append(doc)
        print(json.dumps(docs, indent=2))
        return 0
    parts = []
    for worker, snapshot in read_ok:
        if worker.stale:
            parts.append(
                f"STALE {worker_line(snapshot)}\n  (its last update is {worker.behind_s:.0f} s behind the "
                "fleet's: stopping, stuck or dead; its sessions are not listed)\n"
            )
        else:
            parts.append(render_text([snapshot], filters, sort, color))
    sys.stdout.write("\n".join(parts))
    return 0


def _filtered(doc: dict[str, object], filters: Filters) -> dict[str, object]:
    rows = doc["sessions"]
    assert isinstance(rows, list)
    doc["sessions"] = [
        r
        for r in rows
        if (filters.agent is None or r["agent"] == filters.agent)
        and (filters.tenant is None or r["tenant"] == filters.tenant)
        and (filters.token_class is None or r.get("token_class") == filters.token_class)
        and (filters.status is None or r["state"] == filters.status)
    ]
    return doc


def _report_dead(socket: Path | None) -> None:
    """Workers of the folder that died without draining, and the sessions they lost (on stderr: the
    table or JSON on stdout stays as it was)."""
    try:
        folder = socket.parent if socket is not None else socket_dir()
        dead = dead_workers(folder)
    except OpenRTCError:
        return
    for worker in dead:
        print(f"openrtc top: {worker.describe()}", file=sys.stderr)


def _print_session(snapshots: list[Snapshot], wanted: str, as_json: bool) -> int:
    """The session whose id is (or starts with) `wanted`, in full: what `enter` shows in the live view."""
    found = [(s, r) for s in snapshots for r in s.sessions if r.session_id.startswith(wanted)]
    exact = [(s, r) for s, r in found if r.session_id == wanted]
    if exact:
        found = exact
    if len(found) != 1:
        what = "no session" if not found else f"{len(found)} sessions"
        print(f"openrtc top: {what} with an id starting {wanted!r} in any worker's snapshot", file=sys.stderr)
        return 1
    snapshot, row = found[0]
    if as_json:
        doc = to_dict(snapshot)
        blocks = [b for b in doc["blocks"] if b["session_id"] == row.session_id]
        (session,) = [r for r in doc["sessions"] if r["session_id"] == row.session_id]
        print(json.dumps({"session": session, "blocks": blocks}, indent=2))
    else:
        sys.stdout.write(render_detail(row, snapshot))
    return 0
