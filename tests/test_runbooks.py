"""Every code block of `runbooks/*.md` runs, against a real worker, the way a reader would run it.

Conventions (stated in `runbooks/README.md`):
- ```sh blocks: each line starting with `$ ` is a command (a trailing `\\` continues it); the lines after
  it are sample output and are not compared. A block's commands run in one bash (`set -e`), in a
  folder holding a copy of `agents_example/` as `./agents`, with a private socket folder: every
  command must exit 0.
- ```sh background blocks start workers (in "another terminal"): they must still be running after a
  few seconds. The next background block, or the end of the runbook, stops them with SIGTERM (the
  reader's Ctrl-C): they must drain and exit 0.
- ```python blocks that define an agent are written to an agents folder and must load
  (`openrtc list` exits 0); other python blocks are run as scripts and must exit 0.
- ```text blocks are illustrations and are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = sorted(p for p in (ROOT / "runbooks").glob("*.md") if p.name != "README.md")
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(path: Path) -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(path.read_text())]


def commands(body: str) -> list[str]:
    out: list[str] = []
    lines = iter(body.splitlines())
    for line in lines:
        if not line.startswith("$ "):
            continue
        command = line[2:]
        while command.endswith("\\"):
            command = command[:-1] + " " + next(lines).strip()
        out.append(command)
    return out


def is_agent(code: str) -> bool:
    return "async def entrypoint" in code or re.search(r"class \w+\((openrtc\.)?Agent\)", code) is not None


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=[p.stem for p in RUNBOOKS])
def test_runbook_blocks_run(runbook: Path, tmp_path: Path, sock_home: Path) -> None:
    shutil.copytree(ROOT / "agents_example", tmp_path / "agents")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "XDG_RUNTIME_DIR": str(sock_home),
        "NO_COLOR": "1",
    }
    background: list[tuple[str, subprocess.Popen[bytes]]] = []
    ran = 0
    try:
        for i, (lang, info, body) in enumerate(blocks(runbook)):
            if lang == "sh" and info == "background":
                _stop_all(background, runbook, tmp_path)  # the reader's Ctrl-C in that other terminal
                for command in commands(body):
                    with open(tmp_path / f"background-{len(background)}.log", "wb") as log:
                        proc = subprocess.Popen(
                            ["bash", "-c", f"exec {command}"], cwd=tmp_path, env=env, stdout=log, stderr=log
                        )
                    background.append((command, proc))
                _wait_for_workers(sock_home, len(background))
                for command, proc in background:
                    assert proc.poll() is None, f"{runbook.name}: `{command}` stopped: {_log(tmp_path)}"
                ran += 1
            elif lang == "sh":
                # One shell per block, as a reader types it: `&`, `%1` and variables carry over.
                script = "set -e -x\n" + "\n".join(commands(body))
                _must_pass(["bash", "-c", script], f"{runbook.name} block {i}", tmp_path, env)
                ran += 1
            elif lang == "python":
                ran += _run_python(runbook, i, body, tmp_path, env)
    finally:
        _stop_all(background, runbook, tmp_path)
    assert ran, f"{runbook.name} has no block to run"


def _stop_all(background: list[tuple[str, subprocess.Popen[bytes]]], runbook: Path, tmp_path: Path) -> None:
    while background:
        command, proc = background.pop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        assert code == 0, f"{runbook.name}: `{command}` exited {code} after SIGTERM: {_log(tmp_path)}"


def _run_python(runbook: Path, i: int, code: str, tmp_path: Path, env: dict[str, str]) -> int:
    what = f"{runbook.name} python block {i}"
    if is_agent(code):
        folder = tmp_path / f"snippet-{i}"
        folder.mkdir()
        (folder / f"snippet_{i}.py").write_text(code)
        _must_pass([str(BIN / "openrtc"), "list", str(folder)], what, tmp_path, env)
    else:
        script = tmp_path / f"snippet_{i}.py"
        script.write_text(code)
        _must_pass([sys.executable, str(script)], what, tmp_path, env)
    return 1


def _must_pass(args: list[str], what: str, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, (
        f"{what} exited {done.returncode}\n{done.stdout.decode()}\n{done.stderr.decode()}"
    )


def _wait_for_workers(home: Path, count: int, timeout: float = 20.0) -> None:
    from openrtc.errors import WorkerNotFound
    from openrtc.introspection.client import find_workers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(find_workers(home / "openrtc", timeout=1.0)) >= count:
                return
        except WorkerNotFound:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{count} worker(s) did not start in {timeout}s")


def _log(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(folder.glob("background-*.log")))


def test_the_conventions_are_written_down() -> None:
    readme = (ROOT / "runbooks" / "README.md").read_text()
    assert "sh background" in readme and "tests/test_runbooks.py" in readme
