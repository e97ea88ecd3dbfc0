"""Estimators by name: compute_advantages returns the same advantages as the direct functions, plus the
adv/* metrics (checked against hand-computed values), and rejects unknown names and options clearly."""
from __future__ import annotations

import pytest
import torch

from spro_mcore.algo.advantage_metrics import advantage_metrics
from spro_mcore.algo.advantages import grpo_outcome_advantages, outcome_on_tokens, spro_advantages
from spro_mcore.algo.registry import (
    available_estimators,
    compute_advantages,
    estimator_options,
    get_estimator,
    register_estimator,
)
from tests.algo.test_advantages import hand_batch

pytestmark = pytest.mark.unit


def batch_kwargs():
    old, ref, mask, rewards, ids = hand_batch()
    return dict(old_logprobs=old, ref_logprobs=ref, response_mask=mask, rewards=rewards, group_ids=ids)


def test_registry_lists_and_describes_estimators():
    assert {"grpo", "spro"} <= set(available_estimators())
    assert estimator_options("spro")["baseline"] == "mean"
    assert estimator_options("grpo") == {"std_normalize": True, "eps": 1e-6}


def test_spro_by_name_matches_direct_call_and_hand_metrics():
    kw = batch_kwargs()
    adv, metrics = compute_advantages("spro", **kw, beta=0.5, std_normalize=False)
    direct = spro_advantages(*hand_batch(), beta=0.5, std_normalize=False)
    assert torch.equal(adv, direct)
    # 11 response tokens (lengths 3, 2, 2, 4). Outcome 2/3 on 3 tokens, 1/3 on 2 + 4 tokens: 4/11.
    # |MSA| sums: row 0 1/15 + 7/30 + 1/20, row 2 1/3 + 7/15, row 3 4/15 + 7/30 + 1/20 + 0 -> 1.7 in all.
    # Lone members: group 4 at t=3 (1 token), group 9 at t=0, 1 (2 tokens) -> 3/11.
    torch.testing.assert_close(metrics["adv/grpo_abs_mean"], torch.tensor(4 / 11, dtype=torch.float64))
    torch.testing.assert_close(metrics["adv/msa_abs_mean"], torch.tensor(1.7 / 11, dtype=torch.float64))
    torch.testing.assert_close(metrics["adv/msa_zero_single_alive_frac"], torch.tensor(3 / 11, dtype=torch.float64))


def test_grpo_by_name_has_zero_process_term():
    kw = batch_kwargs()
    adv, metrics = compute_advantages("grpo", **{**kw, "old_logprobs": None, "ref_logprobs": None})
    expected = outcome_on_tokens(grpo_outcome_advantages(kw["rewards"], kw["group_ids"]), kw["response_mask"])
    assert torch.equal(adv, expected)
    assert float(metrics["adv/msa_abs_mean"]) == 0.0
    torch.testing.assert_close(metrics["adv/msa_zero_single_alive_frac"], torch.tensor(3 / 11))


def test_metrics_of_empty_responses_are_zero_not_nan():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    metrics = advantage_metrics(torch.zeros(2, 3), torch.tensor([0.5, -0.5]), mask, torch.tensor([0, 0]))
    assert all(float(v) == 0.0 for v in metrics.values())


@pytest.mark.parametrize("name, options, message", [
    ("sprp", {"beta": 0.1}, "unknown advantage estimator 'sprp' \\(did you mean 'spro'\\?\\)"),
    ("spro", {"betta": 0.1}, "unknown option 'betta' for estimator 'spro' \\(did you mean 'beta'\\?\\)"),
    ("spro", {}, "estimator 'spro' needs option 'beta'"),
    ("grpo", {"beta": 0.1}, "unknown option 'beta' for estimator 'grpo'"),
])
def test_bad_names_and_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        compute_advantages(name, **batch_kwargs(), **options)


def test_register_a_new_estimator():
    name = "test_outcome_times_two"
    if name not in available_estimators():
        @register_estimator(name)
        def _double(*, old_logprobs, ref_logprobs, response_mask, rewards, group_ids, scale: float = 2.0):
            outcome = scale * grpo_outcome_advantages(rewards, group_ids)
            return outcome_on_tokens(outcome, response_mask), outcome
    assert get_estimator(name) is not None
    adv, metrics = compute_advantages(name, **batch_kwargs(), scale=3.0)
    torch.testing.assert_close(adv[0, 0], 3.0 * grpo_outcome_advantages(batch_kwargs()["rewards"],
                                                                          batch_kwargs()["group_ids"])[0])
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("spro")(lambda **kw: None)
    with pytest.raises(TypeError, match="must accept the batch keywords"):
        register_estimator("broken")(lambda *, rewards: None)
