"""Metrics that show the balance of an advantage: outcome (GRPO) term against process (MSA) term.

SPRO's process term grows with position (|R_t| accumulates), so users watch these every step:
  adv/grpo_abs_mean               mean |outcome term| over response tokens
  adv/msa_abs_mean                mean |advantage - outcome term| over response tokens (the MSA part)
  adv/msa_zero_single_alive_frac  fraction of response tokens whose group has only that one member still
                                  generating there, where the mean-baseline MSA is 0 by definition
Values are 0-dim tensors on the input device (no host sync); call .item() to log.
"""
from __future__ import annotations

import torch
from torch import Tensor

from spro_mcore.algo.groups import alive_counts, group_index
from spro_mcore.algo.validation import (
    as_bool_mask,
    check_per_sequence,
    check_same_device,
    check_token_matrix,
    response_lengths,
)


@torch.no_grad()
def advantage_metrics(advantages: Tensor, outcome: Tensor, response_mask: Tensor,
                      group_ids: Tensor) -> dict[str, Tensor]:
    """Metrics of token advantages [B, T] that are `outcome` [B] plus a process term, on response tokens."""
    advantages = check_token_matrix("advantages", advantages)
    shape = tuple(advantages.shape)
    mask = as_bool_mask("response_mask", response_mask, shape)
    outcome = check_per_sequence("outcome", outcome, shape[0], integer=False)
    group_ids = check_per_sequence("group_ids", group_ids, shape[0], integer=True)
    check_same_device(advantages=advantages, outcome=outcome, response_mask=mask, group_ids=group_ids)
    lengths = response_lengths("response_mask", mask)
    dtype = advantages.dtype
    outcome = outcome.to(dtype)
    num_tokens = lengths.sum().clamp(min=1).to(dtype)

    grpo_abs = (outcome.abs() * lengths.to(dtype)).sum() / num_tokens
    process = (advantages - outcome[:, None]).abs_()
    msa_abs = torch.where(mask, process, torch.zeros((), dtype=dtype, device=advantages.device)).sum() / num_tokens
    if shape[0] and shape[1]:
        index, num_groups = group_index(group_ids)
        counts = alive_counts(index, lengths, num_groups, shape[1], dtype)
        single = (counts == 1).sum().to(dtype) / num_tokens  # each such (g, t) holds exactly one token
    else:
        single = torch.zeros((), dtype=dtype, device=advantages.device)
    return {
        "adv/grpo_abs_mean": grpo_abs,
        "adv/msa_abs_mean": msa_abs,
        "adv/msa_zero_single_alive_frac": single,
    }
