"""Every code block of `runbooks/*.md` runs, against a real worker, the way a reader would run it, and
every sample output in them is checked against what the code prints.

Conventions (stated in `runbooks/README.md`):
- Blocks run in a folder laid out like a clone of the repository: `agents_example/` and `.venv/` (this
  interpreter's virtualenv), with a private socket folder.
- ```sh blocks: each line starting with `$ ` is a command (a trailing `\\` continues it). A block's
  commands run in one bash (`set -e`): every command must exit 0. The lines after a command are its
  sample output: each must be found in what the command printed, in order, on consecutive (non-blank) lines; a
  line `...` skips any number of lines, and `...` inside a line stands for any text. Before comparing,
  hex ids and numbers become one token, and runs of spaces one space.
- ```sh background blocks start workers (in "another terminal", and a `nats-server` for a fleet):
  they must still be running after a few seconds. The next background block, or the end of the
  runbook, stops them with SIGTERM (the reader's Ctrl-C): they must drain and exit 0.
- ```text log blocks are sample lines of the last background worker's log: each must be found in it,
  in order (other lines may come between).
- ```python blocks that define an agent are written to an agents folder and must load
  (`openrtc list` exits 0); other python blocks are run as scripts and must exit 0.
- ```text blocks are illustrations and are not run.
"""

from __future__ import annotations

import contextlib
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
MARK = "@@openrtc-runbook-command@@"


def blocks(path: Path) -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(path.read_text())]


def commands(body: str) -> list[tuple[str, list[str]]]:
    """Each command with the sample output lines written under it."""
    out: list[tuple[str, list[str]]] = []
    lines = iter(body.splitlines())
    for line in lines:
        if not line.startswith("$ "):
            if out and line.strip():
                out[-1][1].append(line)
            continue
        command = line[2:]
        while command.endswith("\\"):
            command = command[:-1] + " " + next(lines).strip()
        out.append((command, []))
    return out


def normalize(line: str) -> str:
    line = re.sub(r"\b[0-9a-f]{8,}\b", "0", line)  # session and worker ids
    line = re.sub(r"\d+(?:[.,]\d+)*", "0", line)
    return " ".join(line.split())


def _pattern(sample: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in normalize(sample).split("...")))


def find_sample(sample: list[str], output: list[str], consecutive: bool = True) -> str | None:
    """None when `sample` is found in `output` (see the module's conventions), else what is missing."""
    lines = [normalize(line) for line in output if line.strip()]  # blank lines are layout

    def match(i: int, j: int) -> bool:  # sample[i:] against lines[j:]
        if i == len(sample):
            return True
        if sample[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(lines) + 1))
        pattern = _pattern(sample[i])
        if consecutive:
            return j < len(lines) and pattern.search(lines[j]) is not None and match(i + 1, j + 1)
        return any(pattern.search(lines[k]) and match(i + 1, k + 1) for k in range(j, len(lines)))

    starts = range(len(lines) + 1)
    if any(match(0, j) for j in starts):
        return None
    return "\n".join(sample)


def is_agent(code: str) -> bool:
    return "async def entrypoint" in code or re.search(r"class \w+\((openrtc\.)?Agent\)", code) is not None


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=[p.stem for p in RUNBOOKS])
def test_runbook_blocks_run(runbook: Path, tmp_path: Path, sock_home: Path) -> None:
    shutil.copytree(ROOT / "agents_example", tmp_path / "agents_example")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "XDG_RUNTIME_DIR": str(sock_home),
        "NO_COLOR": "1",
    }
    background: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    ran = 0
    try:
        for i, (lang, info, body) in enumerate(blocks(runbook)):
            if lang == "sh" and info == "background":
                _stop_all(background, runbook, tmp_path)  # the reader's Ctrl-C in that other terminal
                for command, _ in commands(body):
                    log_path = tmp_path / f"background-{i}-{len(background)}.log"
                    # `. .venv/bin/activate && openrtc start ...`: the worker itself gets the signals.
                    setup, _, last = command.rpartition(" && ")
                    script = f"{setup} && exec {last}" if setup else f"exec {command}"
                    with open(log_path, "wb") as log:
                        proc = subprocess.Popen(
                            ["bash", "-c", script], cwd=tmp_path, env=env, stdout=log, stderr=log
                        )
                    background.append((command, proc, log_path))
                # A NATS server started beside the workers (the fleet runbook) is no worker.
                _wait_for_workers(sock_home, sum("nats-server" not in c for c, _, _ in background))
                for command, proc, _ in background:
                    assert proc.poll() is None, f"{runbook.name}: `{command}` stopped: {_log(tmp_path)}"
                ran += 1
            elif lang == "sh":
                _run_sh(runbook, i, body, tmp_path, env)
                ran += 1
            elif lang == "text" and info == "log":
                assert background, f"{runbook.name} block {i}: a log sample needs a worker started before it"
                _expect_in_log(runbook, i, body.splitlines(), background[-1][2])
                ran += 1
            elif lang == "python":
                ran += _run_python(runbook, i, body, tmp_path, env)
    finally:
        _stop_all(background, runbook, tmp_path)
    assert ran, f"{runbook.name} has no block to run"


def _run_sh(runbook: Path, i: int, body: str, tmp_path: Path, env: dict[str, str]) -> None:
    # One shell per block, as a reader types it: `&`, `%1` and variables carry over. A marker line
    # before each command cuts the block's output into each command's own.
    steps = commands(body)
    script = "set -e -x\n" + "\n".join(f"echo {MARK}\n{command}" for command, _ in steps)
    done = _must_pass(["bash", "-c", script], f"{runbook.name} block {i}", tmp_path, env)
    outputs = done.stdout.decode().split(MARK + "\n")[1:]
    for (command, sample), output in zip(steps, outputs, strict=True):
        if sample:
            missing = find_sample(sample, output.splitlines())
            assert missing is None, (
                f"{runbook.name} block {i}: `{command}` did not print its sample output:\n"
                f"--- sample ---\n{missing}\n--- printed ---\n{output}"
            )


def _expect_in_log(runbook: Path, i: int, sample: list[str], log_path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace")
        missing = find_sample([s for s in sample if s.strip()], text.splitlines(), consecutive=False)
        if missing is None:
            return
        assert time.monotonic() < deadline, (
            f"{runbook.name} block {i}: the worker's log lacks the sample lines:\n{missing}\n"
            f"--- log ---\n{text}"
        )
        time.sleep(0.2)


def _stop_all(
    background: list[tuple[str, subprocess.Popen[bytes], Path]], runbook: Path, tmp_path: Path
) -> None:
    while background:
        command, proc, _ = background.pop()
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


def _must_pass(
    args: list[str], what: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    # A group of its own: whatever a block left running with `&` (a worker it started) is killed with
    # it when it fails or hangs, rather than left to join the next runbook's fleet.
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    timed_out = b""
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        timed_out = b"\n(timed out after 120 s)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if timed_out:
        out, err = proc.communicate()  # what it printed until then; closes the pipes
        err += timed_out
    done = subprocess.CompletedProcess(args, proc.returncode, out, err)
    assert done.returncode == 0, f"{what} exited {done.returncode}\n{out.decode()}\n{err.decode()}"
    return done


def _wait_for_workers(home: Path, count: int, timeout: float = 30.0) -> None:
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
    assert "sh background" in readme and "text log" in readme and "tests/test_runbooks.py" in readme


def test_every_runbook_starts_from_the_repository_root() -> None:
    for runbook in RUNBOOKS:
        runnable = [(lang, info, body) for lang, info, body in blocks(runbook) if lang in ("sh", "python")]
        lang, _, body = runnable[0]
        first = commands(body)[0][0]
        # A background block activates on each line: `. .venv/bin/activate && openrtc start ...`.
        assert lang == "sh" and first.partition(" && ")[0] == ". .venv/bin/activate", runbook.name
        no_folder = re.search(r"(?<![.\w])\./agents\b(?!_)", runbook.read_text())
        assert no_folder is None, f"{runbook.name}: the reader has no ./agents folder"


def test_samples_are_matched_loosely_but_not_blindly() -> None:
    printed = ["worker vm:4242  up 3s", "SESSION   AGENT   TENANT", "9a641b35  chat    acme", "done"]
    assert find_sample(["SESSION AGENT TENANT", "1234abcd chat ..."], printed) is None
    assert find_sample(["worker ...:1 up 9s", "...", "done"], printed) is None
    assert find_sample(["9a641b35  voice"], printed) is not None  # a different agent
    assert find_sample(["worker ...", "done"], printed) is not None  # not consecutive without `...`
    assert find_sample(["worker ...", "done"], printed, consecutive=False) is None
