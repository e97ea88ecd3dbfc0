"""One trainer per output folder: a second one is refused while the first lives, and a `kill -9` of the
first leaves no stale lock (the kernel drops a flock with its process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spro_mcore.trainer.run_lock import LOCK_NAME, RunLock, RunLockedError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
HOLD = "import sys, time; from spro_mcore.trainer.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)"


def test_second_trainer_is_refused_until_the_first_is_killed(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"trainer\.output_dir={out} is in use by another trainer "
                                                 rf"\(pid {holder.pid} on .+\)"):
            RunLock(out).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists()  # the file stays; the lock does not
    with RunLock(out) as lock:
        assert f"pid {os.getpid()}" in (out / LOCK_NAME).read_text()
        with pytest.raises(RunLockedError):
            RunLock(out).acquire()  # also within one process: a second open of the file
    RunLock(out).acquire().release()  # released at the end of the with-block
    assert lock._fd is None
