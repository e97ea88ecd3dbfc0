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
