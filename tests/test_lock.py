"""The run lock: one holder at a time, and a crashed holder never blocks the next run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.lock import LockBusy, RunLock


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    # flock conflicts between open file descriptions even inside one process.
    with RunLock(path), pytest.raises(LockBusy, match=f"pid {os.getpid()}"), RunLock(path):
        pass
    with RunLock(path):
        assert path.read_text().startswith(f"pid {os.getpid()}, started ")
    assert path.read_text() == ""


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    script = (
        "import os, sys; from pathlib import Path; from worker.lock import RunLock\n"
        "RunLock(Path(sys.argv[1])).__enter__(); os._exit(9)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert done.returncode == 9
    assert path.read_text().startswith("pid ")
    with RunLock(path):
        assert path.read_text().startswith(f"pid {os.getpid()},")


def test_a_stale_text_with_any_pid_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    path.write_text("pid 999999999, started 2020-01-01T00:00:00Z\n")
    with RunLock(path):
        assert "999999999" not in path.read_text()
