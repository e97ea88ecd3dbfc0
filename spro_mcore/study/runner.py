"""Run a study's cells x seeds, one `spro-mcore train` subprocess at a time, skipping complete runs.

A run is complete when its folder holds ``study_run.json`` (written after the trainer exited 0); it records
the base config's hash and the run's overrides, and a complete run made with different ones stops the study
at once (use a new output_dir) rather than mixing two experiments. An interrupted run is simply started
again: the trainer resumes from its own checkpoint (``checkpoint.resume=auto``). A run that fails is
reported and the study goes on; the completed runs are aggregated either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from spro_mcore.study.code_revision import code_revision
from spro_mcore.study.spec import Cell, Study, StudyError

MARKER = "study_run.json"
ATTEMPTS = "study_attempts.jsonl"  # one line per attempt (exit code, seconds, code revision): a resumed run's wall time adds up
LOG = "train.log"
RUNNER_OVERRIDES = ["logging.progress_bar=false"]  # the study draws its own bar; the run's log stays readable
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Failure:
    cell: str
    seed: int
    returncode: int
    last_line: str
    log: Path


def _base_hash(study: Study) -> str:
    return hashlib.sha256(study.base.read_bytes()).hexdigest()[:16]


def run_record(study: Study, cell: Cell, seed: int) -> dict:
    """What a complete run's marker must say for the run to count in this study (the run folder itself is
    left out, so a study folder can be moved or copied and still resumed)."""
    overrides = [o for o in study.train_overrides(cell, seed) if not o.startswith("trainer.output_dir=")]
    return {"base_sha256_16": _base_hash(study), "cell": cell.name, "seed": seed, "overrides": overrides}


def read_marker(run_dir: Path) -> dict | None:
    f = run_dir / MARKER
    return json.loads(f.read_text()) if f.is_file() else None


def _attempts(run_dir: Path) -> list[dict]:
    f = run_dir / ATTEMPTS
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.is_file() else []


def run_wall_s(run_dir: Path) -> float:
    return sum(a["wall_s"] for a in _attempts(run_dir))


def run_code(run_dir: Path) -> list[str]:
    """The code revisions a complete run was made with (several when it was resumed across changes; empty for
    runs from before revisions were recorded)."""
    marker = read_marker(run_dir) or {}
    return list(marker.get("code", []))


def check_markers(study: Study) -> None:
    for cell in study.cells:
        for seed in study.seeds:
            marker = read_marker(study.run_dir(cell, seed))
            if marker is None:
                continue
            want = run_record(study, cell, seed)
            diff = [k for k in want if marker.get(k) != want[k]]
            if diff:
                raise StudyError(
                    f"{study.run_dir(cell, seed)} is a complete run made with a different {diff[0]} than this "
                    f"study file gives; use a new output_dir (or delete that run folder to redo it)")


def finished(run_dir: Path) -> bool:
    """The run trained to its last step. A trainer stopped by SIGTERM also exits 0 (after saving a checkpoint,
    as a preempted job should), so the exit code alone does not say the run is complete."""
    import yaml

    try:
        total = int(yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["total_steps"])
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any(r.get("step") == total for r in rows if isinstance(r, dict))


def _last_line(log: Path) -> str:
    lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()] if log.is_file() else []
    return lines[-1][:300] if lines else "no output"


class _Child:
    """The running trainer subprocess; SIGTERM to the study is passed on, so the run saves and stops, and
    the study stops once it has (no wait() in the handler: Popen's wait lock is held by the loop's wait)."""

    proc: subprocess.Popen | None = None
    stop: bool = False

    @classmethod
    def forward(cls, signum, frame):
        cls.stop = True
        if cls.proc is not None and cls.proc.poll() is None:
            cls.proc.send_signal(signum)
        else:
            raise SystemExit(128 + signum)


def run_one(study: Study, cell: Cell, seed: int) -> int:
    """One trainer run in a subprocess (its output in <run>/train.log); returns its exit code."""
    run_dir = study.run_dir(cell, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    args = study.train_overrides(cell, seed)
    cmd = [sys.executable, "-m", "spro_mcore.cli", "train", "--config", str(study.base), *RUNNER_OVERRIDES, *args]
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
    code = code_revision()
    t0 = time.time()
    with open(run_dir / LOG, "a") as log:
        log.write(f"# spro-mcore study: {' '.join(cmd[1:])}\n")
        log.flush()
        _Child.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        rc = _Child.proc.wait()
        _Child.proc = None
    wall = time.time() - t0
    with open(run_dir / ATTEMPTS, "a") as f:
        f.write(json.dumps({"returncode": rc, "wall_s": round(wall, 2), "code": code}) + "\n")
    if rc == 0 and not _Child.stop and finished(run_dir):
        codes = sorted({a["code"] for a in _attempts(run_dir) if "code" in a})
        record = {**run_record(study, cell, seed), "wall_s": round(run_wall_s(run_dir), 2), "code": codes}
        (run_dir / MARKER).write_text(json.dumps(record, indent=1) + "\n")
    return rc


def run_all(study: Study, *, progress: bool = True, only: set[str] | None = None) -> list[Failure]:
    """Every (cell, seed) without a marker, seed by seed (only the cells named in `only` when given);
    returns the failures."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    check_markers(study)
    # seed-major: a study stopped part-way has every cell at the same number of seeds (or one fewer)
    runs = [(cell, seed) for seed in study.seeds for cell in study.cells if only is None or cell.name in only]
    failures: list[Failure] = []
    _Child.stop = False
    previous = signal.signal(signal.SIGTERM, _Child.forward)
    bar = Progress(TextColumn("[bold]study runs"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn(), console=Console(stderr=True), disable=not progress)
    try:
        with bar:
            task = bar.add_task("", total=len(runs))
            for cell, seed in runs:
                run_dir = study.run_dir(cell, seed)
                if read_marker(run_dir) is not None:
                    bar.advance(task)
                    continue
                bar.update(task, description=f"{cell.name} seed {seed}")
                rc = run_one(study, cell, seed)
                if _Child.stop:  # SIGTERM: the run saved a checkpoint; the next invocation resumes it
                    raise SystemExit(128 + signal.SIGTERM)
                if rc != 0:
                    failures.append(Failure(cell.name, seed, rc, _last_line(run_dir / LOG), run_dir / LOG))
                    bar.console.print(f"study: run {cell.name} seed {seed} failed (exit {rc}); see {run_dir / LOG}")
                bar.advance(task)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failures
