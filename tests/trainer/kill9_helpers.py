"""Kill -9 a `spro-mcore train` run inside the step after a checkpoint, resume it, and compare it with a
reference run (the async resume tests: hf engine, fp32, so equal means bit for bit)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from spro_mcore.trainer.checkpoint import files
from tests.trainer.e2e_helpers import metrics

ROOT = Path(__file__).resolve().parents[2]
VOLATILE = ("time/", "weight_sync/seconds")  # timings: never equal between two runs
HOOKS = ("SPRO_MCORE_TEST_ASYNC_DROP_AT", "SPRO_MCORE_TEST_ASYNC_LAG")  # set only where a run asks for them


def cmd(out: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "spro_mcore.cli", "train", "--config", str(ROOT / "configs" / "quickstart_cpu.yaml"),
            f"trainer.output_dir={out}", *args]


def env(**extra: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in HOOKS}
    return dict(base, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT), **extra)


def run(out: Path, args: list[str], **hooks: str) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd(out, args), cwd=ROOT, env=env(**hooks), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, f"train exited {p.returncode}:\n{p.stderr[-4000:]}"
    return p


def rows(out: Path) -> dict[int, dict]:
    """Every metrics row without its timings."""
    return {s: {k: v for k, v in r.items() if not k.startswith(VOLATILE)} for s, r in metrics(out).items()}


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "hf_final" / "model.safetensors"))


def kill_inside_the_step_after(tmp: Path, out: Path, args: list[str], resume_at: int, step_seconds: float,
                               **hooks: str) -> None:
    """Start the run, wait for the checkpoint of step `resume_at`, kill -9 it (and its children) at a random
    moment inside the next step (scaled by `step_seconds`, a measured step time: machines differ), and check
    that the checkpoint is the latest one left."""
    seed = int(os.environ.get("SPRO_KILL_SEED", time.time_ns() % 100_000))
    ckpts = out / "checkpoints"
    p = subprocess.Popen(cmd(out, args), cwd=ROOT, env=env(**hooks), stdout=open(tmp / "killed.log", "wb"),
                         stderr=subprocess.STDOUT, start_new_session=True)  # kill -9 takes its children too
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:
        latest = files.read_latest(ckpts) if ckpts.is_dir() else None
        if latest is not None and files.step_of(latest) == resume_at:
            break
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 0.3) * step_seconds)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    rc = p.wait()
    assert rc == -signal.SIGKILL, f"the run was not killed inside the step after step {resume_at} (rc={rc}, seed={seed})"
    assert files.step_of(files.read_latest(ckpts)) == resume_at


def assert_equal_runs(ref: Path, out: Path) -> None:
    """Final weights and every non-timing metrics row equal, bit for bit."""
    a, b = weights(ref), weights(out)
    bad = [k for k in a if not (a[k] == b[k]).all()]
    assert a.keys() == b.keys() and not bad, f"{len(bad)} tensors differ from the reference run, e.g. {bad[:3]}"
    assert rows(out) == rows(ref)
