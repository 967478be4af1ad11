"""The run directory: the lock that keeps two runs out of one folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adarank.io.rundir import OutputLock


def test_second_run_on_the_same_output_dir_is_refused(tmp_path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".adarank.lock").write_text(str(sleeper.pid))
        with pytest.raises(RuntimeError, match=f"in use by another adarank run \\(pid {sleeper.pid}\\)"):
            OutputLock(tmp_path).__enter__()
        assert (tmp_path / ".adarank.lock").read_text() == str(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    with OutputLock(tmp_path):  # the owner is gone: the stale lock is taken over
        assert (tmp_path / ".adarank.lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".adarank.lock").exists()
