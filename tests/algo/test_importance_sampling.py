"""Truncated importance sampling weights w = min(exp(old - engine), C)."""
from __future__ import annotations

import math

import pytest
import torch

from spro_mcore.algo.importance_sampling import truncated_is_weights

pytestmark = pytest.mark.unit


def test_weights_by_hand():
    old = torch.tensor([[math.log(0.3), math.log(0.9), math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    engine = torch.tensor([[math.log(0.6), math.log(0.3), math.log(0.5)]], dtype=torch.float64)
    w = truncated_is_weights(old, engine, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, 2.0, 1.0]], dtype=torch.float64))  # 0.9/0.3 = 3 -> cap 2
    assert not w.requires_grad
    torch.testing.assert_close(truncated_is_weights(old, engine, cap=5.0)[0, 1], torch.tensor(3.0, dtype=torch.float64))


def test_bad_cap():
    with pytest.raises(ValueError, match="tis_cap must be > 0"):
        truncated_is_weights(torch.zeros(1, 1), torch.zeros(1, 1), cap=-1.0)


# ---- masked importance sampling (MIS): against a loop over rows and tokens ------------------------------
from spro_mcore.algo.importance_sampling import masked_is_weights  # noqa: E402


def _mis_loop(old, engine, mask, level, low, high):
    B, T = old.shape
    w = torch.zeros(B, T, dtype=torch.float64)
    kept = torch.zeros(B, T, dtype=torch.bool)
    for i in range(B):
        if level == "sequence":
            log_rho = sum(float(old[i, t] - engine[i, t]) for t in range(T) if mask[i, t])
            if low <= math.exp(log_rho) <= high:
                for t in range(T):
                    if mask[i, t]:
                        w[i, t], kept[i, t] = math.exp(log_rho), True
        else:
            for t in range(T):
                r = math.exp(float(old[i, t] - engine[i, t]))
                if mask[i, t] and low <= r <= high:
                    w[i, t], kept[i, t] = r, True
    return w, kept


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("bounds", [(0.5, 2.0), (0.5, 5.0), (0.9, 1.1)])
def test_mis_equals_loop_reference(level, bounds):
    g = torch.Generator().manual_seed(3)
    B, T = 9, 7
    old = torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4 - 1
    engine = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.8
    lens = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lens[:, None]
    old[~mask] = float("nan")  # padding may hold anything
    w, kept = masked_is_weights(old, engine, mask, level=level, low=bounds[0], high=bounds[1])
    w_ref, kept_ref = _mis_loop(old, engine, mask, level, *bounds)
    torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=0)
    assert torch.equal(kept, kept_ref)
    assert int(kept.sum()) < int(mask.sum())  # the case drops something
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_mis_with_matching_logprobs_is_the_identity(level):
    old = torch.randn(4, 5, dtype=torch.float64)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] + [0] * 4, [1] * 5], dtype=torch.bool)
    w, kept = masked_is_weights(old, old.clone(), mask, level=level, low=0.5, high=2.0)
    assert torch.equal(kept, mask) and torch.equal(w, mask.double())


def test_mis_by_hand_icepop_bounds():
    # ratios 0.4 (dropped), 1.0, 4.0 (kept at IcePop's [0.5, 5]), 6.0 (dropped)
    r = torch.tensor([[0.4, 1.0, 4.0, 6.0]], dtype=torch.float64)
    w, kept = masked_is_weights(r.log(), torch.zeros(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.bool),
                                level="token", low=0.5, high=5.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 4.0, 0.0]], dtype=torch.float64))
    assert kept.tolist() == [[False, True, True, False]]
    # sequence level: the product 0.4 * 1 * 4 * 6 = 9.6 leaves [0.5, 5]: the whole row goes
    w, kept = masked_is_weights(r.log(), torch.zeros(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.bool),
                                level="sequence", low=0.5, high=5.0)
    assert not kept.any() and not w.any()


def test_mis_long_sequence_ratio_does_not_overflow():
    old = torch.zeros(1, 4000, dtype=torch.float64)
    engine = torch.full((1, 4000), -0.5, dtype=torch.float64)  # log rho = 2000: exp() would be inf
    w, kept = masked_is_weights(old, engine, torch.ones(1, 4000, dtype=torch.bool), level="sequence", low=0.5, high=2.0)
    assert not kept.any() and torch.isfinite(w).all()


def test_mis_bad_options():
    with pytest.raises(ValueError, match="mis level"):
        masked_is_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), level="seq",
                          low=0.5, high=2.0)
    with pytest.raises(ValueError, match="mis_high must be > 0.5"):
        masked_is_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), level="token",
                          low=0.5, high=0.5)
