"""The train/inference mismatch options through the CLI on CPU: masked importance sampling (algo.mis) and
the engine's log-probs as pi_old (algo.old_logprobs=engine, one forward pass fewer)."""

import math

import pytest

from tests.trainer.e2e_helpers import metrics, train

pytestmark = pytest.mark.e2e


def test_sequence_mis_reports_what_it_keeps(tmp_path):
    train(tmp_path / "run", "algo.mis=sequence", "algo.mis_low=0.5", "algo.mis_high=2.0", "trainer.eval_interval=0")
    m = metrics(tmp_path / "run")
    for step in (1, 2):
        assert all(math.isfinite(v) for v in m[step].values())
        # the hf engine and the trainer agree to ~1e-5 in fp32: every sequence ratio is ~1, all kept
        assert m[step]["mis/kept_frac"] == 1.0
        assert abs(m[step]["mis/weight_mean"] - 1.0) < 1e-3
        assert "tis/weight_mean" not in m[step]


def test_engine_logprobs_as_old_policy(tmp_path):
    train(tmp_path / "run", "algo.old_logprobs=engine", "trainer.eval_interval=0")
    m = metrics(tmp_path / "run")
    for step in (1, 2):
        assert all(math.isfinite(v) for v in m[step].values())
        # no recomputation: no engine-vs-trainer gap to report, the update's entropy stands
        assert "rollout/engine_logprob_abs_diff_mean" not in m[step] and "entropy/mean" in m[step]
    # the first update's ratio is pi_theta / pi_engine: ~1 (same weights), not 1 bit for bit as with recompute
    assert abs(m[1]["ppo/ratio_mean"] - 1.0) < 1e-3
    assert m[1]["adv/msa_abs_mean"] < 1e-3  # old (engine) ~ ref at step 1: SPRO's process term ~ 0
    assert m[2]["adv/msa_abs_mean"] > 0.0
