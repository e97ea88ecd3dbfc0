"""Split a batch of sequences into micro-batches under a token budget (pure; no torch.distributed).

The same split serves the old/ref log-prob passes and the update, so that the first update's PPO ratio is
exactly 1 (the field's lesson: recompute old log-probs with the update's micro-batch shapes).
"""

from __future__ import annotations


def token_budget_micro_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Greedy, order-preserving: indices of consecutive sequences whose padded size
    (count x longest) stays within `max_tokens`. A sequence longer than the budget gets a micro-batch of
    its own (never dropped)."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        new_longest = max(longest, n)
        if current and new_longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_longest = [], n
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def split_even(n: int, parts: int) -> list[range]:
    """`parts` contiguous ranges covering range(n), sizes differing by at most one (mini-batches)."""
    if parts <= 0:
        raise ValueError(f"parts must be > 0, got {parts}")
    base, extra = divmod(n, parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append(range(start, start + size))
        start += size
    return [r for r in out if len(r)]
