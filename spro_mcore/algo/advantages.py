"""Advantage estimators: GRPO outcome advantage and SPRO (self-guided process reward + Masked Step Advantage).

Definitions: shared/spec/ALGORITHM.md. Shapes: B sequences, T response positions, left-aligned (column 0 is
the first generated token), right padding. Everything runs under no_grad, vectorised over groups given by
arbitrary integer ids (non-contiguous, uneven sizes), in float32 or float64 (lower precisions compute in
float32), on any device. The trainer gets advantages and their metrics in one call from registry.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from spro_mcore.algo.groups import alive_counts, group_index, group_sizes
from spro_mcore.algo.validation import (
    as_bool_mask,
    check_choice,
    check_per_sequence,
    check_real,
    check_same_device,
    check_token_matrix,
    response_lengths,
)

BASELINES = ("mean", "leave_one_out")


def _work_dtype(*dtypes: torch.dtype) -> torch.dtype:
    out = torch.float32
    for dt in dtypes:
        if dt.is_floating_point:
            out = torch.promote_types(out, dt)
    return out


@torch.no_grad()
def grpo_outcome_advantages(rewards: Tensor, group_ids: Tensor, *, std_normalize: bool = True,
                            eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage per sequence, [B].

    A_i = (r_i - mean_g) / (std_g + eps) with the Bessel (n-1) std, or r_i - mean_g when std_normalize is
    False (Dr. GRPO). Groups of size 1 and groups whose rewards are all equal get exactly 0.
    """
    return _checked_outcome(rewards, group_ids, std_normalize, eps, torch.float32, None)


def _checked_outcome(rewards: Tensor, group_ids: Tensor, std_normalize: bool, eps: float,
                     min_dtype: torch.dtype, batch: int | None) -> Tensor:
    """grpo_outcome_advantages in at least min_dtype; batch, when given, is the B the rewards must match."""
    batch = _batch_of(rewards, "rewards") if batch is None else batch
    rewards = check_per_sequence("rewards", rewards, batch, integer=False)
    group_ids = check_per_sequence("group_ids", group_ids, rewards.shape[0], integer=True)
    check_same_device(rewards=rewards, group_ids=group_ids)
    eps = check_real("eps", eps, minimum=0.0)
    if not isinstance(std_normalize, bool):
        raise TypeError(f"std_normalize must be a bool, got {std_normalize!r}")
    r = rewards.to(_work_dtype(rewards.dtype, min_dtype))
    if r.numel() and not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite (found NaN or inf)")
    index, num_groups = group_index(group_ids)
    return _outcome(r, index, num_groups, std_normalize, eps)


def _outcome(r: Tensor, index: Tensor, num_groups: int, std_normalize: bool, eps: float) -> Tensor:
    sizes = group_sizes(index, num_groups, r.dtype)
    mean = torch.zeros_like(sizes).index_add_(0, index, r) / sizes
    centered = r - mean[index]
    if std_normalize:
        # two-pass variance (centre first) keeps precision for rewards far from 0
        sq = torch.zeros_like(sizes).index_add_(0, index, centered * centered)
        std = (sq / (sizes - 1).clamp(min=1)).sqrt()
        centered = centered / (std[index] + eps)
    # exact zeros where the spec says 0, immune to rounding in the mean
    hi = torch.full_like(sizes, -torch.inf).scatter_reduce_(0, index, r, "amax")
    lo = torch.full_like(sizes, torch.inf).scatter_reduce_(0, index, r, "amin")
    degenerate = (sizes < 2) | (hi == lo)
    return torch.where(degenerate[index], torch.zeros_like(centered), centered)


def _batch_of(x: object, name: str) -> int:
    if isinstance(x, Tensor) and x.dim() >= 1:
        return x.shape[0]
    raise ValueError(f"{name} must be a 1-D tensor [B], got {getattr(x, 'shape', type(x).__name__)}")


def outcome_on_tokens(outcome: Tensor, response_mask: Tensor) -> Tensor:
    """A per-sequence advantage [B] broadcast over each response's tokens, 0 on padding, [B, T]."""
    outcome = check_per_sequence("outcome", outcome, _batch_of(outcome, "outcome"), integer=False)
    if not isinstance(response_mask, Tensor) or response_mask.dim() != 2:
        raise ValueError(f"response_mask must be 2-D [B, T], got {getattr(response_mask, 'shape', response_mask)}")
    mask = as_bool_mask("response_mask", response_mask, (outcome.shape[0], response_mask.shape[1]))
    check_same_device(response_mask=mask, outcome=outcome)
    return torch.where(mask, outcome[:, None], torch.zeros((), dtype=outcome.dtype, device=outcome.device))


@torch.no_grad()
def spro_advantages(old_logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor, rewards: Tensor,
                    group_ids: Tensor, *, beta: float, std_normalize: bool = True, eps: float = 1e-6,
                    baseline: str = "mean") -> Tensor:
    """SPRO token advantage, [B, T]: response_mask * (A^GRPO_i + MSA_{i,t}).

    r_{i,t} = beta * (old - ref), R = cumsum_t r, MSA_{i,t} = R_{i,t} - mean of R_{k,t} over the members k
    of i's group alive at t (self included; baseline="leave_one_out" averages the OTHER alive members and
    gives 0 where there are none). Where only one member is alive the mean baseline gives exactly 0.
    """
    return spro_advantage_terms(old_logprobs, ref_logprobs, response_mask, rewards, group_ids, beta=beta,
                                std_normalize=std_normalize, eps=eps, baseline=baseline)[0]


@torch.no_grad()
def spro_advantage_terms(old_logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor, rewards: Tensor,
                         group_ids: Tensor, *, beta: float, std_normalize: bool = True, eps: float = 1e-6,
                         baseline: str = "mean") -> tuple[Tensor, Tensor]:
    """spro_advantages plus its outcome term [B] (in the token dtype), for metrics."""
    old_logprobs = check_token_matrix("old_logprobs", old_logprobs)
    shape = tuple(old_logprobs.shape)
    check_token_matrix("ref_logprobs", ref_logprobs, shape)
    check_same_device(old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                      **{k: v for k, v in (("response_mask", response_mask), ("rewards", rewards),
                                           ("group_ids", group_ids)) if isinstance(v, Tensor)})
    # the outcome term in the token dtype, so that A^GRPO + MSA carries no float32 rounding in float64
    dtype = _work_dtype(old_logprobs.dtype, ref_logprobs.dtype)
    outcome = _checked_outcome(rewards, group_ids, std_normalize, eps, dtype, shape[0])
    tokens = msa_plus_outcome(outcome, old_logprobs, ref_logprobs, response_mask, group_ids,
                              beta=beta, baseline=baseline)
    return tokens, outcome


@torch.no_grad()
def msa_plus_outcome(outcome: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor,
                     group_ids: Tensor, *, beta: float, baseline: str = "mean") -> Tensor:
    """response_mask * (outcome_i + MSA_{i,t}) for a precomputed outcome term [B]; see spro_advantages."""
    old_logprobs = check_token_matrix("old_logprobs", old_logprobs)
    shape = tuple(old_logprobs.shape)
    ref_logprobs = check_token_matrix("ref_logprobs", ref_logprobs, shape)
    mask = as_bool_mask("response_mask", response_mask, shape)
    group_ids = check_per_sequence("group_ids", group_ids, shape[0], integer=True)
    outcome = check_per_sequence("outcome", outcome, shape[0], integer=False)
    check_same_device(old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, response_mask=mask,
                      group_ids=group_ids, outcome=outcome)
    beta = check_real("beta", beta)
    check_choice("baseline", baseline, BASELINES)
    dtype = _work_dtype(old_logprobs.dtype, ref_logprobs.dtype)
    batch, width = shape
    device = old_logprobs.device
    lengths = response_lengths("response_mask", mask)
    if batch == 0 or width == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    index, num_groups = group_index(group_ids)
    zero = torch.zeros((), dtype=dtype, device=device)

    # One [B, T] buffer, updated in place: allocating [B, T] temporaries costs more than the math on CPU.
    out = torch.empty(shape, dtype=dtype, device=device)
    if old_logprobs.dtype == dtype and ref_logprobs.dtype == dtype:
        torch.sub(old_logprobs, ref_logprobs, out=out)
    else:
        torch.sub(old_logprobs.to(dtype), ref_logprobs.to(dtype), out=out)
    # out = R / beta (beta is applied in the product below). Masking after the prefix sum is enough:
    # padding lies after every response token, so whatever it holds (even NaN) only reaches padding.
    out.cumsum_(dim=1)
    torch.where(mask, out, zero, out=out)

    sums = torch.zeros((num_groups, width), dtype=dtype, device=device).index_add_(0, index, out)
    counts = alive_counts(index, lengths, num_groups, width, dtype)
    # table rows 0..G-1: beta * baseline of each group; row G: ones, which carries the outcome term
    table = torch.empty((num_groups + 1, width), dtype=dtype, device=device)
    table[num_groups] = 1.0
    if baseline == "mean":
        torch.div(sums, counts.clamp_(min=1), out=table[:num_groups])
    else:
        # leave-one-out: R_i - (S - R_i)/(c-1) = R_i * c/(c-1) - S/(c-1); 0 where i is alone (c == 1)
        others = (counts - 1).clamp_(min=1)
        has_other = counts > 1
        out.mul_(torch.where(has_other, counts.div_(others), zero).index_select(0, index))
        torch.where(has_other, sums.div_(others), zero, out=table[:num_groups])
    table[:num_groups].mul_(beta)

    # out <- beta * out - table[group of row] + outcome[row] * 1, as one sparse [B, G+1] x dense [G+1, T]
    # product: a fused gather-subtract with no [B, T] temporary. Scaling the table by beta (not the sparse
    # values) makes the lone-survivor case cancel exactly: fl(beta*R) - fl(beta*R) == 0.
    rows = torch.arange(batch, device=device).repeat_interleave(2)
    cols = torch.stack([index, torch.full_like(index, num_groups)], dim=1).flatten()
    vals = torch.stack([torch.full((batch,), -1.0, dtype=dtype, device=device), outcome.to(dtype)], 1).flatten()
    select = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (batch, num_groups + 1),
                                     is_coalesced=True, check_invariants=False)
    out.addmm_(select, table, beta=beta, alpha=1.0)
    return torch.where(mask, out, zero, out=out)
