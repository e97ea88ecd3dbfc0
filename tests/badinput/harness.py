"""Run one bad input through the real `spro-mcore` entry point and check the four properties every bad
input must have: a non-zero exit, ONE line naming the culprit, no traceback, and every file that existed
before byte-identical afterwards.

In process (`spro_mcore.cli.main(argv)`, stderr captured, SystemExit caught) where the input is refused
before a process group exists; in a subprocess where the case needs a real run (an engine, a model).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
ERROR_LINE = re.compile(r"^spro-mcore \w+: error: ")
# what must never reach the user: a traceback, a raw exception line, a Python warning
NOISE = re.compile(r"Traceback \(most recent call last\)|^\s*File \"|^\w*(Error|Exception|Warning): ")


@dataclass
class Case:
    id: str
    setup: Callable  # (tmp: Path, stack: ExitStack) -> argv (after "spro-mcore")
    culprit: str  # regex the error line must match ({tmp} is replaced by the case's folder)
    subprocess: bool = False  # a real run: a fresh interpreter
    started: bool = False  # the run got going: earlier files may have been moved aside (kept, same bytes)
    max_seconds: Optional[float] = None  # wall-clock bound (fail-fast checks)
    marks: tuple = field(default_factory=tuple)


@dataclass
class Outcome:
    code: int
    stderr: str
    seconds: float


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_in_process(argv: list[str]) -> Outcome:
    from spro_mcore import cli

    err, out = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # what a user would see on stderr from the loggers
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    start = time.monotonic()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        logging.getLogger().removeHandler(handler)
    return Outcome(int(code or 0), err.getvalue(), time.monotonic() - start)


def run_subprocess(argv: list[str], timeout: float = 300) -> Outcome:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "spro_mcore.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    return Outcome(r.returncode, r.stderr + r.stdout, time.monotonic() - start)


def check(case: Case, tmp: Path, before: dict[str, str], got: Outcome) -> None:
    text = got.stderr
    assert got.code != 0, f"exit code 0; output:\n{text[-3000:]}"
    errors = [l for l in text.splitlines() if ERROR_LINE.match(l)]
    assert len(errors) == 1, f"expected one error line, got {len(errors)}:\n{text[-3000:]}"
    culprit = case.culprit.replace("{tmp}", re.escape(str(tmp)))
    assert re.search(culprit, errors[0]), f"error line does not name {case.culprit!r}:\n{errors[0]}"
    noise = [l for l in text.splitlines() if NOISE.search(l) and not ERROR_LINE.match(l)]
    assert not noise, "traceback / exception / warning lines:\n" + "\n".join(noise[:10])
    if not case.subprocess:
        assert text.strip().splitlines() == errors, f"more than the error line on stderr:\n{text[-3000:]}"
    if case.max_seconds is not None:
        assert got.seconds < case.max_seconds, f"took {got.seconds:.1f}s (> {case.max_seconds}s)"
    after = snapshot(tmp)
    for rel, digest in before.items():
        if after.get(rel) == digest:
            continue
        kept = case.started and any(
            re.fullmatch(re.escape(Path(rel).name) + r"\.(abandoned|replaced)-\d+", Path(o).name)
            and after[o] == digest for o in after)
        assert kept, f"{rel} was {'changed' if rel in after else 'removed'} (and not kept aside)"
