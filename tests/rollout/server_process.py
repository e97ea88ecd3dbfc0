"""Run an engine server as a child process for a test: wait for it with a hard timeout, always kill it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import requests


def _start(cmd: list[str], log_path: Path, env: dict | None) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)


def _wait_ready(proc: subprocess.Popen, url: str, log_path: Path, deadline: float, timeout_s: float,
                ready_path: str) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready; log tail:\n"
                               + log_path.read_text(errors="replace")[-3000:])
        try:
            if requests.get(url + ready_path, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready at {url} after {timeout_s:.0f} s; log tail:\n"
                               + log_path.read_text(errors="replace")[-3000:])
        time.sleep(1.0)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_servers(servers: list[tuple[list[str], str, Path]], env: dict | None = None, timeout_s: float = 240.0,
                    ready_path: str = "/health"):
    """Start every `(cmd, url, log_path)` at once (their start-ups overlap), each in its own process group;
    yield the processes once every `url + ready_path` answers 200; kill every group after."""
    procs = []
    try:
        for cmd, _url, log_path in servers:
            procs.append(_start(cmd, log_path, env))
        deadline = time.monotonic() + timeout_s
        for proc, (_cmd, url, log_path) in zip(procs, servers):
            _wait_ready(proc, url, log_path, deadline, timeout_s, ready_path)
        yield procs
    finally:
        for proc in procs:
            _stop(proc)


@contextlib.contextmanager
def running_server(cmd: list[str], url: str, log_path: Path, env: dict | None = None, timeout_s: float = 240.0,
                   ready_path: str = "/health"):
    """Start `cmd` in its own process group, yield once `url + ready_path` answers 200, kill the group after."""
    with running_servers([(cmd, url, log_path)], env, timeout_s, ready_path) as procs:
        yield procs[0]
