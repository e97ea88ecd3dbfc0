"""The spro_balanced variant (algo/msa_balance.py) against a slow loop reference built on the paper's SPRO."""

from __future__ import annotations

import random

import pytest
import torch

from spro_mcore.algo.msa_balance import balanced_spro_terms
from spro_mcore.algo.registry import compute_advantages
from tests.algo.test_advantages import as_tensors, random_batch, reference_grpo, reference_spro


def reference_balanced(old, ref, mask, rewards, group_ids, ratio, std_normalize, eps, baseline):
    outcome = reference_grpo(rewards, group_ids, std_normalize, eps)
    full = reference_spro(old, ref, mask, rewards, group_ids, 1.0, std_normalize, eps, baseline)
    cells = [(i, t) for i in range(len(old)) for t in range(len(old[0])) if mask[i][t]]
    if not cells:
        return [[0.0] * len(old[0]) for _ in old]
    msa_mean = sum(abs(full[i][t] - outcome[i]) for i, t in cells) / len(cells)
    out_mean = sum(abs(outcome[i]) for i, t in cells) / len(cells)
    scale = ratio * out_mean / msa_mean if msa_mean > 0 else 0.0
    out = [[0.0] * len(old[0]) for _ in old]
    for i, t in cells:
        out[i][t] = outcome[i] + scale * (full[i][t] - outcome[i])
    return out


def test_matches_loop_reference_on_random_batches():
    rng = random.Random(7)
    for _ in range(200):
        old, ref, mask, rewards, gids = random_batch(rng)
        ratio, std_norm = rng.choice([0.0, 0.25, 1.0, 3.0]), rng.random() < 0.5
        baseline = rng.choice(["mean", "leave_one_out"])
        got, _ = balanced_spro_terms(*as_tensors(old, ref, mask, rewards, gids, torch.float64), msa_ratio=ratio,
                                     std_normalize=std_norm, baseline=baseline)
        want = torch.tensor(reference_balanced(old, ref, mask, rewards, gids, ratio, std_norm, 1e-6, baseline),
                            dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_process_term_is_held_at_the_ratio_whatever_the_drift():
    """The paper's |MSA| scales with the drift (beta * log-ratio); the variant's does not."""
    rng = random.Random(3)
    old, ref, mask, rewards, gids = random_batch(rng)
    while not any(any(row) for row in mask) or len(set(rewards)) < 2 or len(set(gids)) == len(gids):
        old, ref, mask, rewards, gids = random_batch(rng)
    o, r, m, rw, g = as_tensors(old, ref, mask, rewards, gids, torch.float64)
    ratios = []
    for drift in (0.01, 1.0, 100.0):
        adv, metrics = compute_advantages("spro_balanced", old_logprobs=r + drift * (o - r), ref_logprobs=r,
                                          response_mask=m, rewards=rw, group_ids=g, msa_ratio=0.5)
        if metrics["adv/msa_abs_mean"] > 0:
            ratios.append((metrics["adv/msa_abs_mean"] / metrics["adv/grpo_abs_mean"]).item())
    assert ratios and all(abs(x - 0.5) < 1e-9 for x in ratios), ratios


def test_zero_ratio_is_grpo_and_negative_is_refused():
    rng = random.Random(11)
    old, ref, mask, rewards, gids = random_batch(rng)
    t = as_tensors(old, ref, mask, rewards, gids, torch.float64)
    got, _ = compute_advantages("spro_balanced", old_logprobs=t[0], ref_logprobs=t[1], response_mask=t[2],
                                rewards=t[3], group_ids=t[4], msa_ratio=0.0)
    want, _ = compute_advantages("grpo", old_logprobs=t[0], ref_logprobs=t[1], response_mask=t[2], rewards=t[3],
                                 group_ids=t[4])
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="msa_ratio"):
        balanced_spro_terms(*t, msa_ratio=-1.0)
