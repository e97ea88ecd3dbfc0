"""Group bookkeeping for group-relative estimators: dense group indices and per-position alive counts.

Groups are given by arbitrary integer ids, need not be contiguous in the batch and may differ in size;
everything here is a sort or a scatter over [B] or [G, T], never a Python loop over groups.
"""
from __future__ import annotations

import torch
from torch import Tensor


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary ids to 0..G-1. Returns (index [B] int64, G)."""
    uniques, index = torch.unique(group_ids, return_inverse=True)
    return index, int(uniques.numel())


def group_sizes(index: Tensor, num_groups: int, dtype: torch.dtype) -> Tensor:
    """Members per group, [G]."""
    ones = torch.ones(index.shape[0], dtype=dtype, device=index.device)
    return torch.zeros(num_groups, dtype=dtype, device=index.device).index_add_(0, index, ones)


def alive_counts(index: Tensor, lengths: Tensor, num_groups: int, width: int, dtype: torch.dtype) -> Tensor:
    """[G, T]: how many members of each group are still generating at each position.

    With prefix masks, member k is alive at t iff t < length_k, so a histogram of lengths per group and one
    cumsum over [G, T+1] give the counts without touching the [B, T] mask (exact small integers).
    """
    device = index.device
    hist = torch.zeros(num_groups * (width + 1), dtype=dtype, device=device)
    hist.index_add_(0, index * (width + 1) + lengths, torch.ones(index.shape[0], dtype=dtype, device=device))
    finished = hist.view(num_groups, width + 1).cumsum_(dim=1)[:, :width]  # members with length <= t
    return group_sizes(index, num_groups, dtype)[:, None] - finished
