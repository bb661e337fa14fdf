"""A killed training command takes its worker processes with it: orphaned workers of a killed
``conceptedit shapes train`` kept both cores busy for half an hour, slowing the resumed run 2×."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conceptedit.pipelines import shapes_parallel

# a middle process starts a worker (a plain grandchild, which POSIX leaves running when its parent dies),
# writes the worker's pid, then waits; the worker arms the watchdog on its parent and sleeps
MIDDLE = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    worker = subprocess.Popen([sys.executable, "-c", sys.argv[2]])
    Path(sys.argv[1]).write_text(str(worker.pid))
    time.sleep(600)
    """
)
WORKER = "import os, time\nfrom conceptedit.pipelines.shapes_parallel import exit_with_parent\n{arm}\ntime.sleep(600)\n"


def running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except OSError:
        return False


def worker_survives_its_parent(tmp_path: Path, arm: str) -> bool:
    pid_file = tmp_path / "worker.pid"
    code = WORKER.format(arm=arm)
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE, str(pid_file), code])
    worker = 0
    try:
        deadline = time.time() + 60
        while not pid_file.is_file() and time.time() < deadline:
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        time.sleep(3)  # the worker has imported and armed its watchdog
        middle.send_signal(signal.SIGKILL)  # as pkill or an OOM kill: no clean-up runs in the parent
        middle.wait()
        deadline = time.time() + 15
        while running(worker) and time.time() < deadline:
            time.sleep(0.3)
        return running(worker)
    finally:
        middle.kill()
        if worker:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_worker_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    assert not worker_survives_its_parent(tmp_path, "exit_with_parent(os.getppid(), poll_s=0.2)")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_without_the_watchdog_the_worker_would_outlive_its_parent(tmp_path: Path) -> None:
    """The control: the test above can fail (an orphan is what POSIX gives by default)."""
    assert worker_survives_its_parent(tmp_path, "pass")


def test_every_spawned_training_worker_arms_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    armed: list[int] = []

    def stop_here(parent: int) -> None:
        armed.append(parent)
        raise RuntimeError("stop before the process group")

    monkeypatch.setattr(shapes_parallel, "exit_with_parent", stop_here)
    with pytest.raises(RuntimeError, match="stop before"):
        shapes_parallel._spawn_entry(0, 2, 0, "x:y", {}, parent=4242)
    assert armed == [4242]
