"""`algo.estimator=pav` through the `spro-mcore train` command line on CPU, both sources: the verifier (a
random-head verifier directory on the tiny base, tests/pav/random_verifier.py: plumbing, not quality) and
Monte-Carlo continuations (of the frozen initial policy, and of the current one); TP=2 equals one process at the first step; kill -9 and resume is bit-identical
to an uninterrupted run (the prover's continuations are seeded from the checkpointed step)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pav.random_verifier import make_random_verifier
from tests.trainer.e2e_helpers import QUICKSTART, ROOT, SMALL, metrics, subprocess_env, train

pytestmark = pytest.mark.e2e

REQUIRED = [
    "reward/mean", "response_length/mean", "entropy/mean", "adv/grpo_abs_mean", "adv/msa_abs_mean",
    "ppo/ratio_mean", "ppo/clipfrac", "ppo/approx_kl", "rollout/engine_logprob_abs_diff_mean", "time/step",
    "time/generate", "time/logprob", "time/update", "time/weight_sync", "time/process_reward",
    "pav/verifier_tokens", "pav/prover_tokens", "pav/prover_prefixes",
]
THREE = ["trainer.total_steps=3", "trainer.eval_interval=3", "checkpoint.export_hf=false", "algo.estimator=pav"]


def _check(out: Path) -> dict:
    m = metrics(out)
    assert sorted(m) == [0, 1, 2, 3]
    for step in (1, 2, 3):
        missing = [k for k in REQUIRED if k not in m[step]]
        assert not missing, f"step {step} lacks {missing}"
        assert all(math.isfinite(v) for v in m[step].values() if v is not None), m[step]
        assert m[step]["rollout/engine_logprob_abs_diff_mean"] < 1e-4
    assert m[1]["ppo/ratio_mean"] == 1.0 and m[1]["ppo/approx_kl"] == 0.0
    return m


@pytest.fixture(scope="module")
def verifier(tmp_path_factory):
    return make_random_verifier(tmp_path_factory.mktemp("pav_verifier") / "verifier")


@pytest.fixture(scope="module")
def verifier_run(verifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("pav_verifier_run") / "run"
    train(out, *THREE, f"algo.pav_path={verifier}", "algo.pav_alpha=3.0")
    return out


# the Monte-Carlo runs, one per prover, shared by the tests below: 3 steps, a checkpoint after each (the kill -9
# test resumes one), eval at steps 0 and 3, and a large lr so that one update shows in the sampled continuations
MC = ["trainer.total_steps=3", "trainer.eval_interval=3", "checkpoint.interval=1", "algo.estimator=pav",
      "algo.pav_source=mc", "algo.pav_n_mc=2", "optim.lr=3e-3", "algo.entropy_coef=0.01", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def mc_runs(tmp_path_factory):
    """prover -> the run's output folder."""
    base = tmp_path_factory.mktemp("pav_mc")
    for prover in ("initial", "current"):
        train(base / prover, *MC, f"algo.pav_prover={prover}")
    return {p: base / p for p in ("initial", "current")}


def test_pav_verifier_source_three_steps(verifier_run):
    m = _check(verifier_run)
    for step in (1, 2, 3):
        # one verifier pass over every prompt + response; no continuations
        assert m[step]["pav/verifier_tokens"] > 0 and m[step]["pav/prover_tokens"] == 0
    # unlike SPRO (whose process term is exactly 0 while the policy is the reference), PAV's progress is live
    # from the first step: the verifier's Q changes from step to step
    assert m[1]["adv/msa_abs_mean"] > 0


def test_pav_mc_source_three_steps(mc_runs):
    m = _check(mc_runs["initial"])
    for step in (1, 2, 3):
        assert m[step]["pav/prover_tokens"] > 0 and m[step]["pav/verifier_tokens"] == 0
        # n_mc continuations per prefix, each at least one token
        assert m[step]["pav/prover_tokens"] >= 2 * m[step]["pav/prover_prefixes"] > 0
    assert any(m[s]["adv/msa_abs_mean"] > 0 for s in (1, 2, 3))


@pytest.mark.dist
def test_pav_tp2_first_step_equals_single_process(verifier, verifier_run, tmp_path):
    """TP=2's one step against step 1 of the single-process run (everything compared is computed before the
    first update, so the runs' lengths do not matter)."""
    one = ["trainer.total_steps=1", "trainer.eval_interval=0", "checkpoint.export_hf=false", "algo.estimator=pav",
           f"algo.pav_path={verifier}", "algo.pav_alpha=3.0"]
    train(tmp_path / "tp2", *one, "parallel.tp=2", nproc=2)
    a, b = metrics(verifier_run)[1], metrics(tmp_path / "tp2")[1]
    assert a["reward/mean"] == b["reward/mean"] and a["pav/verifier_tokens"] == b["pav/verifier_tokens"]
    assert a["adv/msa_abs_mean"] > 0
    for k in ("adv/msa_abs_mean", "loss/policy", "entropy/mean", "train/grad_norm", "adv/grpo_abs_mean"):
        assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])


def test_pav_mc_kill9_resume_is_bit_identical(mc_runs, tmp_path):
    from spro_mcore.trainer.checkpoint import files
    from tests.trainer.kill9_helpers import assert_equal_runs

    args = [*MC, "algo.pav_prover=current"]
    ref, out = mc_runs["current"], tmp_path / "run"
    # the same command, killed (-9, its whole process group) once step 1's checkpoint is complete
    from tests.trainer import e2e_helpers as h

    cmd = [h.sys.executable, "-m", "spro_mcore.cli", "train", "--config", str(h.QUICKSTART),
           f"trainer.output_dir={out}", *h.SMALL, *args]
    p = subprocess.Popen(cmd, cwd=h.ROOT, env=dict(os.environ, OMP_NUM_THREADS="2"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:
        latest = files.read_latest(out / "checkpoints") if (out / "checkpoints").is_dir() else None
        if latest is not None and files.step_of(latest) >= 1:
            break
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    assert files.step_of(files.read_latest(out / "checkpoints")) < 3
    r = train(out, *args)
    assert "resumed from" in r.stderr
    assert_equal_runs(ref, out)  # final weights and every non-timing metrics row, bit for bit
    assert metrics(ref)[3]["pav/prover_tokens"] > 0


def test_initial_prover_stays_frozen_while_the_current_one_moves(mc_runs):
    """Same seeds, same rollouts: at step 1 both provers are the initial weights (identical estimates); at step 2
    the current-policy prover samples from the updated weights, the initial one does not (the large lr makes the
    update visible in the sampled continuations)."""
    a, b = metrics(mc_runs["initial"]), metrics(mc_runs["current"])
    key = ("pav/prover_tokens", "adv/msa_abs_mean", "loss/policy")
    assert [a[1][k] for k in key] == [b[1][k] for k in key]
    assert a[2]["response_length/mean"] == b[2]["response_length/mean"]  # the same rollouts at step 2...
    assert (a[2]["pav/prover_tokens"], a[2]["adv/msa_abs_mean"]) != (b[2]["pav/prover_tokens"], b[2]["adv/msa_abs_mean"])


def test_progress_agreement_tool_runs(verifier, tmp_path):
    """tools/pav_progress_agreement.py (verifier vs Monte-Carlo progress on one batch) calls the trainer's
    internals; it broke once unnoticed when their signatures changed. One small batch, both sources."""
    cmd = [sys.executable, str(ROOT / "tools" / "pav_progress_agreement.py"), "--config", str(QUICKSTART), *SMALL,
           f"trainer.output_dir={tmp_path / 'run'}", f"algo.pav_path={verifier}", "algo.pav_n_mc=1",
           "data.prompts_per_step=2", "rollout.n=2"]
    r = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["responses"] == 4 and out["steps"] >= 4 and out["n_mc"] == 1
    assert out["pav/verifier_tokens"] > 0 and out["pav/prover_tokens"] > 0
    for k in ("mean_abs_progress_diff_all_steps", "mean_abs_progress_verifier", "mean_abs_progress_mc"):
        assert math.isfinite(out[k]) and out[k] >= 0
