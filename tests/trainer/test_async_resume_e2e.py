"""Kill -9 resume with trainer.async_mode=one_step_off (hf engine, fp32): the batch prefetched for the step
after the checkpoint lives only in memory, so the resumed run regenerates it, from the same prompts and the
step's seed, with the checkpointed weights (docs/ASYNC.md). It must equal, bit for bit, an uninterrupted run
that drops the same rollout (the test hook SPRO_MCORE_TEST_ASYNC_DROP_AT)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spro_mcore.trainer.checkpoint import files

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RESUME_AT = 2  # the checkpoint the killed run resumes from; step 3 (index 2) was prefetched before the kill
ARGS = [
    "trainer.total_steps=3", "trainer.async_mode=one_step_off", "data.prompts_per_step=4", "rollout.n=4",
    "rollout.max_new_tokens=16", "data.synthetic_train_size=64", "data.synthetic_eval_size=4",
    "trainer.eval_interval=0", "logging.progress_bar=false", "logging.tensorboard=false",
    f"checkpoint.interval={RESUME_AT}", "algo.entropy_coef=0.01",  # every update moves the weights
]
VOLATILE = ("time/", "weight_sync/seconds")


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "spro_mcore.cli", "train", "--config", str(ROOT / "configs" / "quickstart_cpu.yaml"),
            f"trainer.output_dir={out}", *ARGS]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SPRO_MCORE_TEST_ASYNC_DROP_AT"}
    return dict(env, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT), **extra)


def _run(out: Path, **env: str) -> subprocess.CompletedProcess:
    p = subprocess.run(_cmd(out), cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, f"train exited {p.returncode}:\n{p.stderr[-4000:]}"
    return p


def _raw_rows(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in rows}


def _rows(out: Path) -> dict[int, dict]:
    return {s: {k: v for k, v in r.items() if not k.startswith(VOLATILE)} for s, r in _raw_rows(out).items()}


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "hf_final" / "model.safetensors"))


def test_kill9_resume_of_one_step_off_equals_the_run_that_drops_the_prefetched_rollout(tmp_path):
    ref = tmp_path / "reference"
    _run(ref, SPRO_MCORE_TEST_ASYNC_DROP_AT=str(RESUME_AT))
    ref_rows = _rows(ref)
    assert ref_rows[2]["rollout/staleness_max"] == 1.0  # one_step_off: step index 1 trained on a prefetch
    assert ref_rows[3]["rollout/staleness_max"] == 0.0  # the dropped prefetch, regenerated with version 2

    seed = int(os.environ.get("SPRO_KILL_SEED", time.time_ns() % 100_000))
    out, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    p = subprocess.Popen(_cmd(out), cwd=ROOT, env=_env(), stdout=open(tmp_path / "killed.log", "wb"),
                         stderr=subprocess.STDOUT, start_new_session=True)  # kill -9 takes its children too
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:  # step_2 is saved: step 3's batch is prefetched
        latest = files.read_latest(ckpts) if ckpts.is_dir() else None
        if latest is not None and files.step_of(latest) == RESUME_AT:
            break
        time.sleep(0.01)
    # a moment inside the last step, scaled by the uninterrupted run's step time (machines differ)
    time.sleep(random.Random(seed).uniform(0.0, 0.3) * _raw_rows(ref)[3]["time/step"])
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    rc = p.wait()
    assert rc == -signal.SIGKILL, f"the run was not killed inside its last step (rc={rc}, seed={seed})"
    assert files.step_of(files.read_latest(ckpts)) == RESUME_AT

    r = _run(out)  # no hook: the resume itself drops the prefetched rollout
    assert f"resumed from {ckpts / files.step_name(RESUME_AT)}" in r.stderr
    a, b = _weights(ref), _weights(out)
    bad = [k for k in a if not (a[k] == b[k]).all()]
    assert a.keys() == b.keys() and not bad, f"{len(bad)} tensors differ from the reference run, e.g. {bad[:3]}"
    assert _rows(out) == ref_rows
