"""PAV's step values: Monte-Carlo Q estimates, the Best-of-K prover, progress, and the beam-search score.

Definitions (shared/spec/PAV.md), for one response with steps h = 1..H after prompt x:
- Q^mu(s_h, a_h): the chance that the prover mu, continuing after step h, reaches a correct answer;
  q[..., 0] = V^mu(s_1) is that chance from the prompt alone, q[..., h] = Q^mu after step h.
- Best-of-K prover: Q^{BoK(pi)} = 1 - (1 - Q^pi)^K (K independent continuations, one correct suffices).
- Progress: A^mu(s_h, a_h) = Q^mu(s_h, a_h) - Q^mu(s_{h-1}, a_{h-1}) = q[..., h] - q[..., h-1].
- Beam search ranks a candidate step by Q^pi(s_h, a_h) + alpha * A^mu(s_h, a_h).
Works on floats and on tensors of any shape (the last dimension is the step axis where there is one).
"""

from __future__ import annotations

import math
from typing import Sequence


def mc_q_hat(rewards: Sequence[float]) -> float:
    """Q-hat: the mean outcome of the continuations sampled after a prefix."""
    if len(rewards) == 0:
        raise ValueError("Q-hat needs at least one continuation (n_mc >= 1)")
    return float(sum(rewards)) / len(rewards)


def bok_q(q_pi, k: int):
    """Q of the Best-of-K prover from the policy's Q: 1 - (1 - q)^k (K = 1 gives q back)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"Best-of-K needs an integer K >= 1, got {k!r}")
    return 1 - (1 - q_pi) ** k


def progress(q):
    """Progress of each step from the values q[..., 0..H] (q[..., 0] = the prompt's value): [..., H]."""
    if isinstance(q, (list, tuple)):
        return [b - a for a, b in zip(q, q[1:])]
    return q[..., 1:] - q[..., :-1]


def beam_score(q_pi, progress_mu, alpha: float):
    """Q^pi + alpha * A^mu: the rank of a candidate step in verifier-guided beam search."""
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    return q_pi + alpha * progress_mu
