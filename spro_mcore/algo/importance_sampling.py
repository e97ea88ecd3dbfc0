"""Corrections for the train/inference mismatch, against the rollout engine's own log-probs.

The engine samples with pi_engine, which differs from the trainer's pi_old even in the same precision
(kernels, batching). Truncated IS (TIS): w = min(exp(old - engine), C) reweights each token's loss toward
pi_old, the cap C bounding the variance. Masked IS (MIS): tokens (or whole sequences) whose ratio leaves
[low, high] are dropped, the rest reweighted. Weights are constants for the gradient.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from spro_mcore.algo.validation import as_bool_mask, check_choice, check_real, check_same_device, check_token_matrix


def truncated_is_weights(old_logprobs: Tensor, engine_logprobs: Tensor, cap: float = 2.0) -> Tensor:
    """w = min(exp(old_logprobs - engine_logprobs), cap), [B, T], detached."""
    old_logprobs = check_token_matrix("old_logprobs", old_logprobs)
    engine_logprobs = check_token_matrix("engine_logprobs", engine_logprobs, tuple(old_logprobs.shape))
    check_same_device(old_logprobs=old_logprobs, engine_logprobs=engine_logprobs)
    cap = check_real("tis_cap", cap, above=0.0)
    return torch.exp(old_logprobs.detach() - engine_logprobs.detach()).clamp_(max=cap)


MIS_LEVELS = ("token", "sequence")


def masked_is_weights(old_logprobs: Tensor, engine_logprobs: Tensor, response_mask: Tensor, *, level: str,
                      low: float, high: float) -> tuple[Tensor, Tensor]:
    """Masked importance sampling (MIS) against the engine's log-probs: (weights [B, T], kept [B, T] bool), detached.

    token:    r_t = exp(old_t - engine_t); a token whose r_t leaves [low, high] is dropped (weight 0), the
              others are weighted by r_t. IcePop (Ring-1T) is this rule with low = 0.5, high = 5.
    sequence: rho_i = exp(sum_t (old_t - engine_t)) over the response; a sequence whose rho_i leaves
              [low, high] is dropped whole, the others weigh rho_i on every token.
    Padding (response_mask False) gets weight 0 and is never counted as kept. With old == engine every weight
    is 1 and nothing is dropped.
    """
    old_logprobs = check_token_matrix("old_logprobs", old_logprobs)
    shape = tuple(old_logprobs.shape)
    engine_logprobs = check_token_matrix("engine_logprobs", engine_logprobs, shape)
    mask = as_bool_mask("response_mask", response_mask, shape)
    check_same_device(old_logprobs=old_logprobs, engine_logprobs=engine_logprobs, response_mask=mask)
    check_choice("mis level", level, MIS_LEVELS)
    low = check_real("mis_low", low, above=0.0)
    high = check_real("mis_high", high, above=low)
    zero = torch.zeros((), dtype=old_logprobs.dtype, device=old_logprobs.device)
    log_r = torch.where(mask, old_logprobs.detach() - engine_logprobs.detach(), zero)
    if level == "sequence":
        log_r = log_r.sum(dim=1, keepdim=True).expand(shape)
    # compare in log space: a sequence ratio overflows exp() long before it is judged
    kept = mask & (log_r >= math.log(low)) & (log_r <= math.log(high))
    weights = torch.where(kept, torch.exp(log_r.clamp(max=math.log(high))), zero)
    return weights, kept
