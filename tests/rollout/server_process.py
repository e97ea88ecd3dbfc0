"""Run an engine server as a child process for a test: wait for it with a hard timeout, always kill it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import requests


@contextlib.contextmanager
def running_server(cmd: list[str], url: str, log_path: Path, env: dict | None = None, timeout_s: float = 240.0,
                   ready_path: str = "/health"):
    """Start `cmd` in its own process group, yield once `url + ready_path` answers 200, kill the group after."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready; log tail:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            try:
                if requests.get(url + ready_path, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready at {url} after {timeout_s:.0f} s; log tail:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            time.sleep(1.0)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
