"""One trainer per output folder: an exclusive `flock` on `<output_dir>/.spro-run.lock`, held for the whole
run by the main rank. The kernel drops the lock when the holder's process ends in any way (kill -9
included), so a lock is never stale; the file itself stays (it only records who held it last)."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from spro_mcore.errors import UserError

LOCK_NAME = ".spro-run.lock"


class RunLockedError(UserError):
    """Another trainer is running into the same output folder."""


class RunLock:
    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"trainer.output_dir={self.path.parent} is in use by another trainer ({holder}); "
                                 "wait for it to finish, stop it, or choose another trainer.output_dir") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError as e:  # e.g. a full disk: name the file
            os.close(fd)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
