"""A labelled, off-by-default SPRO variant (not in the paper): the MSA term held at a fixed share of the
outcome term.

Why: with the paper's fixed beta, |MSA| grows as the policy drifts from the reference (the process reward
is the drift itself, and a positive MSA pushes it further), so a beta that is inert early dominates the
outcome term later (docs/studies/quickstart_beta). Here the MSA of a batch is rescaled by one scalar so that
its mean |.| over response tokens equals `msa_ratio` times the outcome term's mean |.| over the same tokens.
The direction of the process signal is the paper's; only its scale is set relative to the outcome. A batch
whose outcome term is all zero (every group uniform) gets no process term either.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spro_mcore.algo.advantages import outcome_on_tokens, spro_advantage_terms
from spro_mcore.algo.validation import check_real


@torch.no_grad()
def balanced_spro_terms(old_logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor, rewards: Tensor,
                        group_ids: Tensor, *, msa_ratio: float, std_normalize: bool = True, eps: float = 1e-6,
                        baseline: str = "mean") -> tuple[Tensor, Tensor]:
    """(token advantages [B, T], outcome term [B]): outcome + s * MSA(beta=1), s a detached batch scalar with
    mean|s * MSA| = msa_ratio * mean|outcome| over response tokens."""
    ratio = check_real("msa_ratio", msa_ratio, minimum=0.0)
    tokens, outcome = spro_advantage_terms(old_logprobs, ref_logprobs, response_mask, rewards, group_ids, beta=1.0,
                                           std_normalize=std_normalize, eps=eps, baseline=baseline)
    outcome_tok = outcome_on_tokens(outcome, response_mask).to(tokens.dtype)
    msa = tokens - outcome_tok
    mask = response_mask.to(tokens.dtype)
    n = mask.sum()
    if n == 0:
        return tokens, outcome
    msa_mean = (msa.abs() * mask).sum() / n
    outcome_mean = (outcome_tok.abs() * mask).sum() / n
    scale = ratio * outcome_mean / msa_mean if msa_mean > 0 else torch.zeros((), dtype=tokens.dtype)
    return outcome_tok + scale * msa, outcome
