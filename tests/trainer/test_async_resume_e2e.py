"""Kill -9 resume with trainer.async_mode=one_step_off (hf engine, fp32): the batch prefetched for the step
after the checkpoint lives only in memory, so the resumed run regenerates it, from the same prompts and the
step's seed, with the checkpointed weights (docs/ASYNC.md). It must equal, bit for bit, an uninterrupted run
that drops the same rollout (the test hook SPRO_MCORE_TEST_ASYNC_DROP_AT)."""

from __future__ import annotations

import pytest

from spro_mcore.trainer.checkpoint import files
from tests.trainer.e2e_helpers import metrics
from tests.trainer.kill9_helpers import assert_equal_runs, kill_inside_the_step_after, rows, run

pytestmark = pytest.mark.e2e

RESUME_AT = 2  # the checkpoint the killed run resumes from; step 3 (index 2) was prefetched before the kill
ARGS = [
    "trainer.total_steps=3", "trainer.async_mode=one_step_off", "data.prompts_per_step=4", "rollout.n=4",
    "rollout.max_new_tokens=16", "data.synthetic_train_size=64", "data.synthetic_eval_size=4",
    "trainer.eval_interval=0", "logging.progress_bar=false", "logging.tensorboard=false",
    f"checkpoint.interval={RESUME_AT}", "algo.entropy_coef=0.01",  # every update moves the weights
]


def test_kill9_resume_of_one_step_off_equals_the_run_that_drops_the_prefetched_rollout(tmp_path):
    ref = tmp_path / "reference"
    run(ref, ARGS, SPRO_MCORE_TEST_ASYNC_DROP_AT=str(RESUME_AT))
    ref_rows = rows(ref)
    assert ref_rows[2]["rollout/staleness_max"] == 1.0  # one_step_off: step index 1 trained on a prefetch
    assert ref_rows[3]["rollout/staleness_max"] == 0.0  # the dropped prefetch, regenerated with version 2

    out = tmp_path / "run"
    kill_inside_the_step_after(tmp_path, out, ARGS, RESUME_AT, metrics(ref)[3]["time/step"])
    r = run(out, ARGS)  # no hook: the resume itself drops the prefetched rollout
    assert f"resumed from {out / 'checkpoints' / files.step_name(RESUME_AT)}" in r.stderr
    assert_equal_runs(ref, out)
