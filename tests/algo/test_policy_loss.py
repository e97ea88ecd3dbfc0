"""PPO-clip policy loss against hand-computed values: clip-higher, dual clip, TIS, KL and entropy terms,
their gradients, the metrics, and padding that holds NaN."""
from __future__ import annotations

import math

import pytest
import torch

from spro_mcore.algo.policy_loss import ppo_policy_loss

pytestmark = pytest.mark.unit
NAN = float("nan")


def hand_case():
    """Two sequences, old log-probs 0, so ratio = exp(logprobs):
      row 0: (ratio 1.5, A +1), (ratio 0.5, A -1), padding
      row 1: (ratio 0.9, A +1), (ratio 5.0, A -1), (ratio 1.0, A +0.5)
    With eps_low 0.2, eps_high 0.3 the per-token losses max(-A r, -A clip(r, 0.8, 1.3)) are
      row 0: max(-1.5, -1.3) = -1.3 (clipped), max(0.5, 0.8) = 0.8 (clipped)
      row 1: -0.9, max(5, 1.3) = 5 (not clipped), -0.5
    """
    ratios = torch.tensor([[1.5, 0.5, 1.0], [0.9, 5.0, 1.0]], dtype=torch.float64)
    logprobs = ratios.log()
    logprobs[0, 2] = NAN  # padding may hold anything
    advantages = torch.tensor([[1.0, -1.0, NAN], [1.0, -1.0, 0.5]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    return logprobs.requires_grad_(), torch.zeros(2, 3, dtype=torch.float64), advantages, mask


CLIP = dict(eps_low=0.2, eps_high=0.3, global_num_tokens=5, global_num_seqs=2)


@pytest.mark.parametrize("loss_agg, expected", [
    ("token_mean", (-1.3 + 0.8 - 0.9 + 5.0 - 0.5) / 5),
    ("seq_mean_token_mean", ((-1.3 + 0.8) / 2 + (-0.9 + 5.0 - 0.5) / 3) / 2),
    ("seq_mean_token_sum_norm", ((-1.3 + 0.8) / 4 + (-0.9 + 5.0 - 0.5) / 4) / 2),
])
def test_clip_higher_values_and_gradient(loss_agg, expected):
    logprobs, old, adv, mask = hand_case()
    loss, metrics = ppo_policy_loss(logprobs, old, adv, mask, loss_agg=loss_agg, norm_len=4, **CLIP)
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    loss.backward()
    # d/dlogp of -A r is -A r where unclipped; 0 where clipped or padding
    weight = {"token_mean": (1 / 5, 1 / 5), "seq_mean_token_mean": (1 / 4, 1 / 6),
              "seq_mean_token_sum_norm": (1 / 8, 1 / 8)}[loss_agg]
    expected_grad = torch.tensor([[0.0, 0.0, 0.0], [-0.9 * weight[1], 5.0 * weight[1], -0.5 * weight[1]]],
                                 dtype=torch.float64)
    torch.testing.assert_close(logprobs.grad, expected_grad, rtol=1e-12, atol=1e-15)
    assert math.isclose(float(metrics["loss/policy"]), expected, rel_tol=1e-12)


def test_metrics_by_hand():
    logprobs, old, adv, mask = hand_case()
    _, metrics = ppo_policy_loss(logprobs, old, adv, mask, loss_agg="token_mean", **CLIP)
    assert math.isclose(float(metrics["ppo/clipfrac"]), 2 / 5)
    assert math.isclose(float(metrics["ppo/ratio_mean"]), (1.5 + 0.5 + 0.9 + 5.0 + 1.0) / 5, rel_tol=1e-12)
    approx_kl = -(math.log(1.5) + math.log(0.5) + math.log(0.9) + math.log(5.0)) / 5  # mean of old - new
    assert math.isclose(float(metrics["ppo/approx_kl"]), approx_kl, rel_tol=1e-12)
    assert "loss/kl" not in metrics and "entropy/mean" not in metrics  # not given, not invented
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_dual_clip_bounds_negative_advantage_tokens():
    logprobs, old, adv, mask = hand_case()
    loss, metrics = ppo_policy_loss(logprobs, old, adv, mask, loss_agg="token_mean", dual_clip_c=3.0, **CLIP)
    # row 1 token 1: A = -1, ratio 5: min(max(5, 1.3), 3) = 3; nothing else exceeds -A c
    assert math.isclose(loss.item(), (-1.3 + 0.8 - 0.9 + 3.0 - 0.5) / 5, rel_tol=1e-12)
    assert math.isclose(float(metrics["ppo/dual_clipfrac"]), 1 / 5)
    loss.backward()
    assert float(logprobs.grad[1, 1]) == 0.0  # the dual-clip bound is a constant
    assert math.isclose(float(logprobs.grad[1, 0]), -0.9 / 5, rel_tol=1e-12)


def test_truncated_importance_sampling_weights_the_policy_term():
    logprobs, old, adv, mask = hand_case()
    # old - engine = log 1.5 on row 0, log 3 on row 1 (capped at C = 2)
    engine = torch.tensor([[-math.log(1.5)] * 3, [-math.log(3.0)] * 3], dtype=torch.float64)
    loss, metrics = ppo_policy_loss(logprobs, old, adv, mask, loss_agg="token_mean", engine_logprobs=engine,
                                    tis_cap=2.0, **CLIP)
    expected = (1.5 * (-1.3 + 0.8) + 2.0 * (-0.9 + 5.0 - 0.5)) / 5
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    assert math.isclose(float(metrics["tis/weight_mean"]), (2 * 1.5 + 3 * 2.0) / 5, rel_tol=1e-12)
    assert math.isclose(float(metrics["tis/capped_frac"]), 3 / 5)
    assert math.isclose(float(metrics["loss/policy"]), expected, rel_tol=1e-12)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty_term(estimator):
    logprobs, old, adv, mask = hand_case()
    ref = torch.full((2, 3), math.log(0.5), dtype=torch.float64)
    ref[1] = logprobs.detach()[1] + math.log(2.0)  # row 1: log_ratio = -log 2 exactly
    pg = (-1.3 + 0.8 - 0.9 + 5.0 - 0.5) / 5
    lr0 = [math.log(1.5) - math.log(0.5), math.log(0.5) - math.log(0.5)]
    lrs = lr0 + [-math.log(2.0)] * 3
    formula = {"k1": lambda x: x, "k2": lambda x: x * x / 2, "k3": lambda x: math.exp(-x) - 1 + x}[estimator]
    kl = sum(formula(x) for x in lrs) / 5
    loss, metrics = ppo_policy_loss(logprobs, old, adv, mask, loss_agg="token_mean", ref_logprobs=ref,
                                    kl_coef=0.1, kl_estimator=estimator, **CLIP)
    assert math.isclose(float(metrics["loss/kl"]), kl, rel_tol=1e-12)
    assert math.isclose(loss.item(), pg + 0.1 * kl, rel_tol=1e-12)
    _, no_coef = ppo_policy_loss(logprobs, old, adv, mask, loss_agg="token_mean", ref_logprobs=ref,
                                 kl_estimator=estimator, **CLIP)
    assert math.isclose(float(no_coef["loss/kl"]), kl, rel_tol=1e-12)  # logged even at the default coef 0


def test_entropy_bonus_and_its_gradient():
    logprobs, old, adv, mask = hand_case()
    entropy = torch.tensor([[0.5, 1.0, NAN], [2.0, 0.0, 1.5]], dtype=torch.float64, requires_grad=True)
    loss, metrics = ppo_policy_loss(logprobs, old, adv, mask, loss_agg="token_mean", entropy=entropy,
                                    entropy_coef=0.01, **CLIP)
    pg = (-1.3 + 0.8 - 0.9 + 5.0 - 0.5) / 5
    assert math.isclose(loss.item(), pg - 0.01 * 5.0 / 5, rel_tol=1e-12)
    assert math.isclose(float(metrics["entropy/mean"]), 1.0, rel_tol=1e-12)
    loss.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.002, -0.002, 0.0], [-0.002] * 3],
                                                          dtype=torch.float64))


def test_padding_nan_gives_finite_loss_and_zero_gradient():
    logprobs, old, adv, mask = hand_case()
    old = old.clone()
    old[0, 2] = NAN
    loss, metrics = ppo_policy_loss(logprobs, old, adv, mask, loss_agg="seq_mean_token_mean",
                                    ref_logprobs=torch.full((2, 3), NAN, dtype=torch.float64).masked_fill(mask, 0.0),
                                    kl_coef=0.5, **CLIP)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert float(logprobs.grad[0, 2]) == 0.0


def test_first_step_ratio_is_one_and_loss_is_minus_mean_advantage():
    torch.manual_seed(0)
    logprobs = torch.randn(4, 6, dtype=torch.float64)
    adv = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    loss, metrics = ppo_policy_loss(logprobs.clone().requires_grad_(), logprobs, adv, mask, loss_agg="token_mean",
                                    global_num_tokens=24, global_num_seqs=4)
    assert math.isclose(loss.item(), -float(adv.mean()), rel_tol=1e-12)
    assert float(metrics["ppo/clipfrac"]) == 0.0 and math.isclose(float(metrics["ppo/ratio_mean"]), 1.0)


@pytest.mark.parametrize("overrides, message", [
    ({"loss_agg": "mean"}, "loss_agg must be one of"),
    ({"loss_agg": "seq_mean_token_sum_norm"}, "needs norm_len"),
    ({"global_num_seqs": None, "loss_agg": "seq_mean_token_mean"}, "needs global_num_seqs"),
    ({"global_num_tokens": 0}, "global_num_tokens must be > 0"),
    ({"dual_clip_c": 1.0}, "dual_clip_c must be > 1"),
    ({"eps_low": 1.0}, "eps_low must be < 1"),
    ({"kl_coef": 0.1}, "kl_coef > 0 needs ref_logprobs"),
    ({"entropy_coef": 0.1}, "entropy_coef > 0 needs the per-token entropy"),
    ({"kl_estimator": "k4", "ref_logprobs": torch.zeros(2, 3, dtype=torch.float64)}, "kl_estimator must be one of"),
    ({"engine_logprobs": torch.zeros(2, 4, dtype=torch.float64)}, "engine_logprobs has shape"),
    ({"engine_logprobs": torch.zeros(2, 3, dtype=torch.float64), "tis_cap": 0.0}, "tis_cap must be > 0"),
])
def test_bad_loss_options(overrides, message):
    logprobs, old, adv, mask = hand_case()
    kwargs = {**CLIP, "loss_agg": "token_mean", **overrides}
    with pytest.raises(ValueError, match=message):
        ppo_policy_loss(logprobs, old, adv, mask, **kwargs)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_masked_importance_sampling_weights_the_policy_term(level):
    logprobs, old, adv, mask = hand_case()
    # token ratios old/engine: row 0 (3, 1), row 1 (1.2, 0.9, 1.0); bounds [0.5, 2]
    engine = -torch.tensor([[math.log(3.0), 0.0, 0.0], [math.log(1.2), math.log(0.9), 0.0]], dtype=torch.float64)
    loss, metrics = ppo_policy_loss(logprobs, old, adv, mask, loss_agg="token_mean", engine_logprobs=engine,
                                    mis_level=level, mis_low=0.5, mis_high=2.0, **CLIP)
    if level == "token":  # the 3.0 token is dropped, the rest weighed by their ratio
        expected = (0 * -1.3 + 1.0 * 0.8 + 1.2 * -0.9 + 0.9 * 5.0 + 1.0 * -0.5) / 5
        weight_mean, kept = (0 + 1 + 1.2 + 0.9 + 1) / 5, 4 / 5
    else:  # row 0's product is 3 (dropped), row 1's 1.08 (kept)
        expected = 1.08 * (-0.9 + 5.0 - 0.5) / 5
        weight_mean, kept = 3 * 1.08 / 5, 3 / 5
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    assert math.isclose(float(metrics["mis/weight_mean"]), weight_mean, rel_tol=1e-12)
    assert math.isclose(float(metrics["mis/kept_frac"]), kept, rel_tol=1e-12)
    assert "tis/weight_mean" not in metrics
    loss.backward()
    if level == "sequence":  # a dropped sequence gets no gradient at all
        assert torch.equal(logprobs.grad[0], torch.zeros(3, dtype=torch.float64))


def test_mis_needs_engine_logprobs():
    logprobs, old, adv, mask = hand_case()
    with pytest.raises(ValueError, match="mis_level needs engine_logprobs"):
        ppo_policy_loss(logprobs, old, adv, mask, mis_level="token", **CLIP)
