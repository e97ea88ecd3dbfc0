"""Truncated importance sampling (TIS) against the rollout engine's own log-probs.

The engine samples with pi_engine, which differs from the trainer's pi_old even in the same precision
(kernels, batching). w = min(exp(old - engine), C) reweights each token's loss toward pi_old; the cap C
bounds the variance. The weight is a constant for the gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

from spro_mcore.algo.validation import check_real, check_same_device, check_token_matrix


def truncated_is_weights(old_logprobs: Tensor, engine_logprobs: Tensor, cap: float = 2.0) -> Tensor:
    """w = min(exp(old_logprobs - engine_logprobs), cap), [B, T], detached."""
    old_logprobs = check_token_matrix("old_logprobs", old_logprobs)
    engine_logprobs = check_token_matrix("engine_logprobs", engine_logprobs, tuple(old_logprobs.shape))
    check_same_device(old_logprobs=old_logprobs, engine_logprobs=engine_logprobs)
    cap = check_real("tis_cap", cap, above=0.0)
    return torch.exp(old_logprobs.detach() - engine_logprobs.detach()).clamp_(max=cap)
