"""Q-hat, the Best-of-K prover, progress and the beam score against hand computations."""
from __future__ import annotations

import pytest
import torch

from spro_mcore.algo.progress import beam_score, bok_q, mc_q_hat, progress

pytestmark = pytest.mark.unit


def test_q_hat_is_the_mean_outcome():
    assert mc_q_hat([1, 0, 0, 1, 1]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="n_mc >= 1"):
        mc_q_hat([])


def test_best_of_k_by_hand():
    assert bok_q(0.5, 1) == pytest.approx(0.5)
    assert bok_q(0.5, 4) == pytest.approx(1 - 0.5 ** 4)  # 0.9375
    assert bok_q(0.2, 3) == pytest.approx(1 - 0.8 ** 3)  # 0.488
    torch.testing.assert_close(bok_q(torch.tensor([0.0, 0.1, 1.0], dtype=torch.float64), 2),
                               torch.tensor([0.0, 0.19, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="K >= 1"):
        bok_q(0.5, 0)


def test_best_of_k_is_the_chance_that_one_of_k_samples_is_correct():
    # enumerate K=3 independent Bernoulli(q) outcomes: P(at least one 1)
    q, k = 0.3, 3
    exact = sum((q if a else 1 - q) * (q if b else 1 - q) * (q if c else 1 - q)
                for a in (0, 1) for b in (0, 1) for c in (0, 1) if a or b or c)
    assert bok_q(q, k) == pytest.approx(exact)


def test_progress_by_hand():
    # V(s1)=0.5, then Q after steps 1..3 = 0.75, 0.25, 1.0
    assert progress([0.5, 0.75, 0.25, 1.0]) == pytest.approx([0.25, -0.5, 0.75])
    q = torch.tensor([[0.5, 0.75, 0.25, 1.0], [0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(progress(q), torch.tensor([[0.25, -0.5, 0.75], [0.0, 0.5, 0.0]], dtype=torch.float64))


def test_progress_under_a_bok_prover_by_hand():
    q_pi = torch.tensor([0.5, 0.75], dtype=torch.float64)
    # BoK(2): 1 - 0.25 = 0.75, 1 - 0.0625 = 0.9375 -> progress 0.1875
    torch.testing.assert_close(progress(bok_q(q_pi, 2)), torch.tensor([0.1875], dtype=torch.float64))


def test_beam_score_by_hand():
    assert beam_score(0.6, -0.2, 0.5) == pytest.approx(0.5)
    torch.testing.assert_close(beam_score(torch.tensor([0.1, 0.9]), torch.tensor([0.4, 0.0]), 2.0),
                               torch.tensor([0.9, 0.9]))
    with pytest.raises(ValueError, match="finite"):
        beam_score(0.5, 0.1, float("nan"))
