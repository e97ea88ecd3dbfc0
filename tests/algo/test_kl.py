"""KL estimators against their formulas, and against the exact KL of small categorical distributions:
k1 and k3 are unbiased (their expectation under pi is KL(pi || ref)), k2 is not."""
from __future__ import annotations

import math

import pytest
import torch

from spro_mcore.algo.kl import kl_penalty

pytestmark = pytest.mark.unit


def test_formulas_by_hand():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=torch.float64)
    ln2 = math.log(2.0)  # log_ratio = +ln 2, then -ln 2
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([[ln2, -ln2]], dtype=torch.float64))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"),
                               torch.tensor([[ln2 ** 2 / 2, ln2 ** 2 / 2]], dtype=torch.float64))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"),
                               torch.tensor([[0.5 - 1 + ln2, 2 - 1 - ln2]], dtype=torch.float64))


def test_expectations_against_exact_kl():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        pi = torch.softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)
        ref = torch.softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)
        exact = float((pi * (pi / ref).log()).sum())
        # every token of the vocabulary as one position, weighted by its probability under pi
        lp, lr = pi.log()[None, :], ref.log()[None, :]
        expect = {k: float((pi * kl_penalty(lp, lr, k)[0]).sum()) for k in ("k1", "k2", "k3")}
        assert math.isclose(expect["k1"], exact, rel_tol=1e-10)
        assert math.isclose(expect["k3"], exact, rel_tol=1e-10)
        assert not math.isclose(expect["k2"], exact, rel_tol=1e-3)
        assert bool((kl_penalty(lp, lr, "k3") >= 0).all())


def test_gradient_flows_through_policy_only():
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64, requires_grad=True)
    kl_penalty(logprobs, ref, "k3").sum().backward()
    # d/dx (exp(-x) - 1 + x) = 1 - exp(-x), x = logprobs - ref
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(logprobs.grad, 1 - torch.exp(-x))
    assert ref.grad is None


def test_bad_estimator_name():
    with pytest.raises(ValueError, match="kl_estimator must be one of 'k1', 'k2', 'k3'"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "low_var")
