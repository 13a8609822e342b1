"""Helpers to run the real `openrtc` command in a subprocess and read its JSON logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OPENRTC = str(Path(sys.executable).with_name("openrtc"))


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENRTC, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


class Worker:
    """A real worker process (`openrtc start|dev`) logging JSON lines to a file."""

    def __init__(
        self,
        command: str,
        agents: Path,
        home: Path,
        *flags: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.home = home
        self.log_path = home / f"worker-{time.monotonic_ns()}.log"
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(home), **(env or {})}
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [OPENRTC, command, str(agents), "--log-format", "json", *flags],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=self.env,
            cwd=cwd,
        )

    @property
    def socket(self) -> Path:
        return self.home / "openrtc" / f"{self.proc.pid}.sock"

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"message": line, "level": "raw"})
        return out

    def wait_for_log(self, text: str, timeout: float = 15.0, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.records() if text in r.get("message", "")]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged (x{count}); log:\n{self.log_path.read_text()}")

    def ready(self) -> Worker:
        self.wait_for_log("worker started")
        return self

    def dispatch(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("dispatch", *args, env=self.env)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
