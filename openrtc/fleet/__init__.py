"""Fleets of workers on NATS JetStream: the wire protocol and the dispatch client (the workers' side
is being built: see README, "Status")."""

from typing import TYPE_CHECKING, Any

from openrtc.fleet.protocol import FleetError, Request

if TYPE_CHECKING:
    from openrtc.fleet.client import Published, dispatch

__all__ = ["FleetError", "Published", "Request", "dispatch"]


def __getattr__(name: str) -> Any:
    # On first use: nats-py is the fleet extra's, and the protocol alone needs none of it.
    if name in ("Published", "dispatch"):
        from openrtc.fleet import client

        return getattr(client, name)
    raise AttributeError(f"module 'openrtc.fleet' has no attribute {name!r}")
