"""Loss aggregation over a GLOBAL batch that arrives in micro-batches, on several data-parallel ranks.

Each call returns this micro-batch's additive share of the global-batch loss: the global counts are
arguments, so summing the returned values (and their gradients) over all micro-batches and ranks gives
exactly the loss of the one big batch. Modes, with N_tok / N_seq the global token / sequence counts:
  token_mean               sum_{i,t} x / N_tok                          (DAPO)
  seq_mean_token_mean      sum_i (sum_t x_{i,t} / n_i) / N_seq          (GRPO/SPRO: 1/|y_i| per sequence)
  seq_mean_token_sum_norm  sum_{i,t} x / norm_len / N_seq               (Dr. GRPO: constant length)
n_i is the token count of sequence i; a sequence never spans two micro-batches, so it is local.

The trainer must not rescale these shares again: undo megatron-core's division of the loss by the number of
micro-batches, and sum (not average) gradients over data-parallel ranks.
"""
from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor

from spro_mcore.algo.validation import as_bool_mask, check_choice, check_real, check_token_matrix

LOSS_AGG_MODES = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def local_counts(response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(response tokens, sequences with at least one response token) of one micro-batch, int64 0-dim.

    Sum them over every micro-batch of the global batch and all-reduce (SUM) over data-parallel ranks to
    get the global_num_tokens / global_num_seqs that aggregate() and the policy loss take.
    """
    if not isinstance(response_mask, Tensor) or response_mask.dim() != 2:
        raise ValueError(f"response_mask must be 2-D [B, T], got {getattr(response_mask, 'shape', response_mask)}")
    mask = as_bool_mask("response_mask", response_mask, tuple(response_mask.shape))
    per_seq = mask.sum(dim=1)
    return per_seq.sum(), (per_seq > 0).sum()


def check_count(name: str, value: object) -> Tensor | float:
    """A global count: a positive number, or a 0-dim/1-element tensor (not checked for sign: no host sync)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a positive number (the global count), got {value!r}")
    return check_real(name, value, above=0.0)


def aggregate(per_token: Tensor, response_mask: Tensor, *, loss_agg: str,
              global_num_tokens: Tensor | float | None = None, global_num_seqs: Tensor | float | None = None,
              norm_len: float | None = None) -> Tensor:
    """This micro-batch's share (0-dim) of the global-batch aggregate of per_token [B, T] over response tokens."""
    per_token = check_token_matrix("per_token", per_token)
    mask = as_bool_mask("response_mask", response_mask, tuple(per_token.shape))
    check_choice("loss_agg", loss_agg, LOSS_AGG_MODES)
    # where, not multiply: padding may hold inf/NaN, and the gradient there must be exactly 0
    masked = torch.where(mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if loss_agg == "token_mean":
        if global_num_tokens is None:
            raise ValueError("loss_agg='token_mean' needs global_num_tokens")
        return masked.sum() / check_count("global_num_tokens", global_num_tokens)
    if global_num_seqs is None:
        raise ValueError(f"loss_agg={loss_agg!r} needs global_num_seqs")
    num_seqs = check_count("global_num_seqs", global_num_seqs)
    if loss_agg == "seq_mean_token_mean":
        lengths = mask.sum(dim=1).clamp(min=1).to(per_token.dtype)
        return (masked.sum(dim=1) / lengths).sum() / num_seqs
    if norm_len is None:
        raise ValueError("loss_agg='seq_mean_token_sum_norm' needs norm_len (the constant length, e.g. the max "
                         "response length)")
    return masked.sum() / check_real("norm_len", norm_len, above=0.0) / num_seqs
