"""trainer.async_mode=one_step_off through the CLI on CPU with the hf engine (sequential-but-stale there, see
trainer/rollout_producer.py), against async_mode=off run on the same seeds."""

import math

import pytest

from tests.trainer.conftest import ASYNC_STEPS as STEPS
from tests.trainer.e2e_helpers import metrics, train

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def runs(tmp_path_factory, async_off_run):
    out = {"off": async_off_run}
    base = tmp_path_factory.mktemp("async")
    train(base / "stale", "trainer.async_mode=one_step_off", *STEPS)
    out["stale"] = metrics(base / "stale")
    mp = pytest.MonkeyPatch()
    mp.setenv("SPRO_MCORE_TEST_ASYNC_LAG", "0")  # the test hook: prefetch after the weight sync, in the thread
    try:
        train(base / "lag0", "trainer.async_mode=one_step_off", *STEPS)
    finally:
        mp.undo()
    out["lag0"] = metrics(base / "lag0")
    return out


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def test_one_step_off_at_staleness_0_equals_off_bit_for_bit(runs):
    for step in (1, 2, 3):
        assert _untimed(runs["lag0"][step]) == _untimed(runs["off"][step])
        assert runs["lag0"][step]["rollout/staleness_mean"] == 0.0


def test_one_step_off_trains_on_the_previous_policy_version(runs):
    off, stale = runs["off"], runs["stale"]
    for step in (1, 2, 3):
        assert all(math.isfinite(v) for v in stale[step].values() if v is not None)
    # step 1 has nothing prefetched: generated in place, equal to off; then every batch is one version old
    assert _untimed(stale[1]) == _untimed(off[1])
    assert stale[2]["rollout/staleness_mean"] == 1.0 and stale[3]["rollout/staleness_max"] == 1.0
    # on these seeds step 1's groups carry no signal (no update: version 1 = version 0 = the reference),
    # step 2's do: version 2 differs
    assert off[1]["train/grad_norm"] == 0.0 and off[2]["train/grad_norm"] > 0.0
    # step 3 trains version 2 on a batch sampled by version 1: the engine/trainer log-prob gap is the
    # staleness (off: the same weights, numerics only, ~1e-7)
    assert off[3]["rollout/engine_logprob_abs_diff_mean"] < 1e-5
    assert stale[3]["rollout/engine_logprob_abs_diff_mean"] > 100 * off[3]["rollout/engine_logprob_abs_diff_mean"]
    # SPRO's process reward takes the sampler's log-probs: version 1 = the reference, so the MSA is ~0
    # (the recomputed pi_theta_2 would give off's size)
    assert stale[3]["adv/msa_abs_mean"] < 1e-5 and off[3]["adv/msa_abs_mean"] > 1e-4
