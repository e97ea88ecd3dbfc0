"""Split a batch of sequences into micro-batches under a token budget (pure; no torch.distributed).

The same split serves the old/ref log-prob passes and the update, so that the first update's PPO ratio is
exactly 1 (the field's lesson: recompute old log-probs with the update's micro-batch shapes).

Padded micro-batches cost count x longest tokens (`token_budget_micro_batches`); packed ones cost the sum of
the real lengths (`token_balanced_micro_batches`, built on `balanced_partition`, which also balances tokens
over data-parallel ranks).
"""

from __future__ import annotations

import heapq


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


def balanced_partition(weights: list[int], parts: int) -> list[list[int]]:
    """Indices of `weights` split into `parts` groups whose sums are as even as possible (fewer groups when
    there are fewer items; groups never empty). The better (smaller largest sum) of Karmarkar-Karp's
    largest differencing method and greedy largest-first (LPT), so the largest sum is within 4/3 of the
    optimum (LPT's bound) and usually much closer (KK). Deterministic: groups and their members sorted."""
    if parts <= 0:
        raise ValueError(f"parts must be > 0, got {parts}")
    if any(w < 0 for w in weights):
        raise ValueError("weights must be >= 0")
    parts = min(parts, len(weights))
    if parts == 0:
        return []
    best = min((_karmarkar_karp(weights, parts), _largest_first(weights, parts)),
               key=lambda g: max(sum(weights[i] for i in grp) for grp in g))
    return sorted(sorted(g) for g in best)


def _largest_first(weights: list[int], parts: int) -> list[list[int]]:
    heap = [(0, k) for k in range(parts)]
    groups: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        total, k = heapq.heappop(heap)
        groups[k].append(i)
        heapq.heappush(heap, (total + weights[i], k))
    return groups


def _karmarkar_karp(weights: list[int], parts: int) -> list[list[int]]:
    # every entry: `parts` subsets (sum, members) sorted by sum descending; merge the two entries with the
    # largest spread, pairing the heaviest subset of one with the lightest of the other
    heap = []
    for i, w in enumerate(weights):
        subsets = [(w, [i])] + [(0, []) for _ in range(parts - 1)]
        heapq.heappush(heap, (-w, i, subsets))
    while len(heap) > 1:
        _, tie, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        merged = sorted(((sa + sb, ma + mb) for (sa, ma), (sb, mb) in zip(a, reversed(b))),
                        key=lambda s: -s[0])
        heapq.heappush(heap, (-(merged[0][0] - merged[-1][0]), tie, merged))
    return [m for _, m in heap[0][2] if m]


def token_balanced_micro_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices of sequences grouped into as few micro-batches as the token budget allows (real lengths, as
    packed: the sum of a micro-batch's lengths stays <= `max_tokens`), tokens balanced across them. A
    sequence longer than the budget gets a micro-batch of its own (never dropped). Every index appears
    exactly once."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    alone = [[i] for i, n in enumerate(lengths) if n > max_tokens]
    rest = [i for i, n in enumerate(lengths) if n <= max_tokens]
    w = [lengths[i] for i in rest]
    k = max(1, -(-sum(w) // max_tokens)) if rest else 0
    groups: list[list[int]] = []
    while rest:
        groups = balanced_partition(w, k)
        if all(sum(w[i] for i in g) <= max_tokens for g in groups):
            break
        k += 1  # terminates: with k = len(rest) every group is one sequence <= max_tokens
    return sorted(alone + [[rest[i] for i in g] for g in groups])


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


def dp_balanced_micro_batches(lengths: list[int], dp: int, max_tokens: int) -> list[list[list[int]]]:
    """Per data-parallel rank, the micro-batches (indices into the global `lengths`) of a rollout whose
    sequences are spread over `dp` ranks by tokens rather than by fixed row slices. Every rank computes the
    same answer from the (globally known) lengths. The lists are padded with empty micro-batches to one
    length; the policy drops those (no collective runs per micro-batch across data-parallel ranks, so
    unequal counts are safe: trainer/policy/dp_balance.py). Every index appears exactly once."""
    if dp <= 0:
        raise ValueError(f"dp must be > 0, got {dp}")
    groups = balanced_partition(list(lengths), dp)
    groups += [[] for _ in range(dp - len(groups))]  # fewer sequences than ranks
    per_rank = []
    for g in groups:
        mbs = token_balanced_micro_batches([lengths[i] for i in g], max_tokens) if g else []
        per_rank.append([[g[i] for i in mb] for mb in mbs])
    count = max(1, max(len(m) for m in per_rank))
    return [m + [[] for _ in range(count - len(m))] for m in per_rank]


def dp_token_imbalance(lengths: list[int], per_rank: list[list[list[int]]]) -> float:
    """Max over mean of the tokens each data-parallel rank processes (1.0 = perfectly balanced)."""
    tokens = [sum(lengths[i] for mb in rank for i in mb) for rank in per_rank]
    mean = sum(tokens) / len(tokens)
    return max(tokens) / mean if mean else 1.0
