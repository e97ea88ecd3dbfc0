"""Kill -9 resume with trainer.async_mode=bounded (hf engine, fp32): the batches the feed generated ahead live
only in memory, so a run resumed from step k's checkpoint restarts the feed at step k with version k, from the
same prompts and step seeds (docs/ASYNC.md). Which version samples which step depends on the thread's timing,
so every run here pins it with the test hook SPRO_MCORE_TEST_ASYNC_LAG=max_staleness (batch j is sampled by
version max(start, j - max_staleness)); the reference drops what was generated ahead at step k
(SPRO_MCORE_TEST_ASYNC_DROP_AT=k), as the resume does, and the resumed run must equal it bit for bit."""

from __future__ import annotations

import pytest

from spro_mcore.trainer.checkpoint import files
from tests.trainer.e2e_helpers import metrics
from tests.trainer.kill9_helpers import assert_equal_runs, kill_inside_the_step_after, rows, run

pytestmark = pytest.mark.e2e

RESUME_AT, STALENESS = 2, 1
PIN = {"SPRO_MCORE_TEST_ASYNC_LAG": str(STALENESS)}
ARGS = [
    "trainer.total_steps=4", "trainer.async_mode=bounded", f"trainer.max_staleness={STALENESS}",
    "data.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=16", "data.synthetic_train_size=64",
    "data.synthetic_eval_size=4", "trainer.eval_interval=0", "logging.progress_bar=false",
    "logging.tensorboard=false", f"checkpoint.interval={RESUME_AT}",
    "algo.entropy_coef=0.01",  # every update moves the weights
]


def test_kill9_resume_of_bounded_equals_the_run_that_drops_what_was_generated_ahead(tmp_path):
    ref = tmp_path / "reference"
    run(ref, ARGS, SPRO_MCORE_TEST_ASYNC_DROP_AT=str(RESUME_AT), **PIN)
    ref_rows = rows(ref)
    # batch j sampled by version max(0, j - 1), except the batch of step index 2: generated ahead with
    # version 1, dropped at step 2 and regenerated with version 2; step index 3's then comes from version 2.
    # Stale batches really train here (bounded did not degenerate to off), before and after the resume.
    assert [ref_rows[s]["rollout/staleness_max"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 1.0]
    assert all(ref_rows[s]["rollout/dropped_stale"] == 0.0 for s in (1, 2, 3, 4))

    out = tmp_path / "run"
    kill_inside_the_step_after(tmp_path, out, ARGS, RESUME_AT, metrics(ref)[3]["time/step"], **PIN)
    r = run(out, ARGS, **PIN)  # no drop hook: the resume itself loses what was generated ahead
    assert f"resumed from {out / 'checkpoints' / files.step_name(RESUME_AT)}" in r.stderr
    assert_equal_runs(ref, out)
