"""GRPO outcome and SPRO (CPR + Masked Step Advantage) advantages against hand-computed numbers and against
a slow loop-based reference written straight from ALGORITHM.md."""
from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from spro_mcore.algo.advantages import (
    grpo_outcome_advantages,
    outcome_on_tokens,
    spro_advantage_terms,
    spro_advantages,
)

pytestmark = pytest.mark.unit
NAN = float("nan")


# ---------------------------------------------------------------- loop reference (ALGORITHM.md, literally)

def reference_grpo(rewards, group_ids, std_normalize, eps):
    members = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    out = [0.0] * len(rewards)
    for idx in members.values():
        rs = [rewards[i] for i in idx]
        if len(rs) < 2 or all(r == rs[0] for r in rs):
            continue
        mean = sum(rs) / len(rs)
        std = statistics.stdev(rs)  # Bessel (n - 1)
        for i in idx:
            out[i] = (rewards[i] - mean) / (std + eps) if std_normalize else rewards[i] - mean
    return out


def reference_spro(old, ref, mask, rewards, group_ids, beta, std_normalize, eps, baseline):
    batch, width = len(old), len(old[0])
    outcome = reference_grpo(rewards, group_ids, std_normalize, eps)
    cpr = [[0.0] * width for _ in range(batch)]
    for i in range(batch):
        running = 0.0
        for t in range(width):
            if mask[i][t]:
                running += beta * (old[i][t] - ref[i][t])
            cpr[i][t] = running
    out = [[0.0] * width for _ in range(batch)]
    for i in range(batch):
        for t in range(width):
            if not mask[i][t]:
                continue
            alive = [k for k in range(batch) if group_ids[k] == group_ids[i] and mask[k][t]]
            if baseline == "mean":
                msa = cpr[i][t] - sum(cpr[k][t] for k in alive) / len(alive)
            else:
                others = [k for k in alive if k != i]
                msa = cpr[i][t] - sum(cpr[k][t] for k in others) / len(others) if others else 0.0
            out[i][t] = outcome[i] + msa
    return out


def random_batch(rng: random.Random):
    batch, width = rng.randint(1, 12), rng.randint(1, 9)
    num_groups = rng.randint(1, batch)
    ids = rng.sample(range(-40, 40), num_groups)  # arbitrary, non-contiguous ids
    group_ids = [rng.choice(ids) for _ in range(batch)]  # interleaved, uneven (often singletons)
    lengths = [rng.randint(0, width) for _ in range(batch)]
    mask = [[t < n for t in range(width)] for n in lengths]
    kind = rng.choice(["binary", "continuous", "all_equal"])
    if kind == "binary":
        rewards = [float(rng.randint(0, 1)) for _ in range(batch)]
    elif kind == "continuous":
        rewards = [rng.uniform(-2, 2) for _ in range(batch)]
    else:
        rewards = [0.7] * batch
    old = [[rng.uniform(-4, 0) for _ in range(width)] for _ in range(batch)]
    ref = [[o + rng.gauss(0, 0.5) for o in row] for row in old]
    for i in range(batch):  # padding holds junk, NaN included: it must not matter
        for t in range(lengths[i], width):
            old[i][t], ref[i][t] = rng.choice([NAN, 1e30, -7.0]), rng.choice([NAN, 3.0])
    return old, ref, mask, rewards, group_ids


def as_tensors(old, ref, mask, rewards, group_ids, dtype):
    return (torch.tensor(old, dtype=dtype), torch.tensor(ref, dtype=dtype), torch.tensor(mask),
            torch.tensor(rewards, dtype=dtype), torch.tensor(group_ids))


# ---------------------------------------------------------------- GRPO by hand

def test_grpo_hand_computed():
    # groups: 5 -> rows 0,2,3 rewards (1,0,1); 2 -> rows 1,4 rewards (0,1); 9 -> row 5 alone
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    ids = torch.tensor([5, 2, 5, 5, 2, 9])
    # group 5: mean 2/3, Bessel var = (1/9 + 4/9 + 1/9) / 2 = 1/3; group 2: mean 1/2, var = 1/2
    s3, s2 = 1 / math.sqrt(3), 1 / math.sqrt(2)
    expected = torch.tensor([(1 / 3) / s3, -0.5 / s2, -(2 / 3) / s3, (1 / 3) / s3, 0.5 / s2, 0.0])
    got = grpo_outcome_advantages(rewards, ids, eps=0.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    got_eps = grpo_outcome_advantages(rewards, ids)  # default eps = 1e-6 in the denominator
    torch.testing.assert_close(got_eps[0], torch.tensor((1 / 3) / (s3 + 1e-6)), rtol=1e-6, atol=0)
    dr_grpo = grpo_outcome_advantages(rewards, ids, std_normalize=False)
    torch.testing.assert_close(dr_grpo, torch.tensor([1 / 3, -0.5, -2 / 3, 1 / 3, 0.5, 0.0]), rtol=0, atol=1e-7)


def test_grpo_degenerate_groups_are_exactly_zero():
    # all-equal rewards whose float mean is not exactly the reward (0.1 * 3 / 3 != 0.1), and a singleton
    rewards = torch.tensor([0.1, 0.1, 0.1, 3.0], dtype=torch.float64)
    ids = torch.tensor([1, 1, 1, 2])
    for std_normalize in (True, False):
        got = grpo_outcome_advantages(rewards, ids, std_normalize=std_normalize)
        assert torch.equal(got, torch.zeros(4, dtype=torch.float64))


def test_grpo_integer_rewards_and_dtypes():
    ids = torch.tensor([0, 0, 1, 1])
    from_int = grpo_outcome_advantages(torch.tensor([1, 0, 0, 1]), ids)
    assert from_int.dtype == torch.float32
    torch.testing.assert_close(from_int, grpo_outcome_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), ids))
    assert grpo_outcome_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), ids[:2]).dtype == torch.float64


# ---------------------------------------------------------------- SPRO by hand

def hand_batch():
    """Group 4 = rows 0, 2, 3 (lengths 3, 2, 4; rewards 1, 0, 0); group 9 = row 1 alone. beta = 0.5.

    old - ref per row (ref = 0): row 0 (0.2, -0.4, 0.6) -> R = (0.1, -0.1, 0.2)
                                 row 2 (1.0, 0.2)       -> R = (0.5, 0.6)
                                 row 3 (-0.2, 0, 0.4, 0.2) -> R = (-0.1, -0.1, 0.1, 0.2)
    """
    old = torch.tensor([[0.2, -0.4, 0.6, NAN], [1.0, 1.0, 5.0, 5.0], [1.0, 0.2, 7.0, NAN], [-0.2, 0.0, 0.4, 0.2]],
                       dtype=torch.float64)
    ref = torch.zeros_like(old)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    return old, ref, mask, torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([4, 9, 4, 4])


def test_spro_hand_computed_mean_baseline():
    # Dr. GRPO outcome: 2/3 for row 0, -1/3 for rows 2 and 3, 0 for the singleton.
    # t=0 alive {0,2,3}: mean(0.1, 0.5, -0.1) = 1/6 ; t=1 alive {0,2,3}: mean(-0.1, 0.6, -0.1) = 2/15
    # t=2 alive {0,3}: mean(0.2, 0.1) = 0.15 ; t=3 alive {3}: MSA = 0
    expected = torch.tensor([
        [2 / 3 + 0.1 - 1 / 6, 2 / 3 - 0.1 - 2 / 15, 2 / 3 + 0.2 - 0.15, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [-1 / 3 + 0.5 - 1 / 6, -1 / 3 + 0.6 - 2 / 15, 0.0, 0.0],
        [-1 / 3 - 0.1 - 1 / 6, -1 / 3 - 0.1 - 2 / 15, -1 / 3 + 0.1 - 0.15, -1 / 3],
    ], dtype=torch.float64)
    got = spro_advantages(*hand_batch(), beta=0.5, std_normalize=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert torch.equal(got[3, 3], torch.tensor(-1 / 3, dtype=torch.float64))  # lone survivor: outcome only
    torch.testing.assert_close(got[0], torch.tensor([0.6, 13 / 30, 43 / 60, 0.0], dtype=torch.float64))


def test_spro_hand_computed_leave_one_out():
    # t=0: row0 vs mean(0.5,-0.1)=0.2 ; row2 vs mean(0.1,-0.1)=0 ; row3 vs mean(0.1,0.5)=0.3
    # t=1: row0 vs 0.25 ; row2 vs -0.1 ; row3 vs 0.25 ; t=2: row0 vs 0.1, row3 vs 0.2 ; t=3: row3 has no other -> 0
    expected = torch.tensor([
        [2 / 3 - 0.1, 2 / 3 - 0.35, 2 / 3 + 0.1, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [-1 / 3 + 0.5, -1 / 3 + 0.7, 0.0, 0.0],
        [-1 / 3 - 0.4, -1 / 3 - 0.35, -1 / 3 - 0.1, -1 / 3],
    ], dtype=torch.float64)
    got = spro_advantages(*hand_batch(), beta=0.5, std_normalize=False, baseline="leave_one_out")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_spro_with_std_normalised_outcome_and_terms():
    tokens, outcome = spro_advantage_terms(*hand_batch(), beta=0.5)
    s = 1 / math.sqrt(3)  # group 4 rewards (1, 0, 0): Bessel std = 1/sqrt(3)
    torch.testing.assert_close(outcome, torch.tensor([(2 / 3) / (s + 1e-6), 0.0, -(1 / 3) / (s + 1e-6),
                                                      -(1 / 3) / (s + 1e-6)], dtype=torch.float64))
    assert outcome.dtype == torch.float64  # the outcome term follows the log-prob dtype
    torch.testing.assert_close(tokens[3, 3], outcome[3], rtol=0, atol=0)


# ---------------------------------------------------------------- properties from the spec

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spro_equals_grpo_exactly_when_old_equals_ref(dtype):
    rng = random.Random(0)
    for _ in range(30):
        old, _, mask, rewards, ids = random_batch(rng)
        old_t, _, mask_t, rewards_t, ids_t = as_tensors(old, old, mask, rewards, ids, dtype)
        for std_normalize in (True, False):
            for baseline in ("mean", "leave_one_out"):
                spro = spro_advantages(old_t, old_t.clone(), mask_t, rewards_t, ids_t, beta=0.7,
                                       std_normalize=std_normalize, baseline=baseline)
                grpo = outcome_on_tokens(grpo_outcome_advantages(rewards_t, ids_t, std_normalize=std_normalize),
                                         mask_t)
                assert torch.equal(spro, grpo)


def test_spro_matches_loop_reference_on_random_batches():
    rng = random.Random(1234)
    seen_singleton = seen_equal = seen_empty = False
    for _ in range(150):
        old, ref, mask, rewards, ids = random_batch(rng)
        beta = rng.choice([0.05, 1.0, 2.5])
        eps = rng.choice([1e-6, 0.0, 0.3])
        tensors = as_tensors(old, ref, mask, rewards, ids, torch.float64)
        seen_singleton |= any(ids.count(g) == 1 for g in ids)
        seen_equal |= len(set(rewards)) == 1 and len(ids) > 1
        seen_empty |= not all(any(row) for row in mask)
        for std_normalize in (True, False):
            for baseline in ("mean", "leave_one_out"):
                expected = reference_spro(old, ref, mask, rewards, ids, beta, std_normalize, eps, baseline)
                got = spro_advantages(*tensors, beta=beta, std_normalize=std_normalize, eps=eps, baseline=baseline)
                torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-10)
                got32 = spro_advantages(*as_tensors(old, ref, mask, rewards, ids, torch.float32), beta=beta,
                                        std_normalize=std_normalize, eps=eps, baseline=baseline)
                assert got32.dtype == torch.float32
                torch.testing.assert_close(got32, torch.tensor(expected, dtype=torch.float32), rtol=1e-4, atol=2e-4)
    assert seen_singleton and seen_equal and seen_empty  # the random layouts did cover the edge cases


def test_grpo_matches_loop_reference_on_random_batches():
    rng = random.Random(99)
    for _ in range(100):
        _, _, _, rewards, ids = random_batch(rng)
        for std_normalize in (True, False):
            expected = reference_grpo(rewards, ids, std_normalize, 1e-6)
            got = grpo_outcome_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor(ids),
                                          std_normalize=std_normalize)
            torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_spro_is_equivariant_to_row_order():
    old, ref, mask, rewards, ids = hand_batch()
    perm = torch.tensor([3, 0, 1, 2])
    base = spro_advantages(old, ref, mask, rewards, ids, beta=0.5)
    permuted = spro_advantages(old[perm], ref[perm], mask[perm], rewards[perm], ids[perm], beta=0.5)
    torch.testing.assert_close(permuted, base[perm], rtol=0, atol=1e-12)


def test_spro_lower_precision_inputs_compute_in_float32():
    old, ref, mask, rewards, ids = hand_batch()
    old = old.nan_to_num(0.0)
    got = spro_advantages(old.bfloat16(), ref.bfloat16(), mask, rewards, ids, beta=0.5)
    assert got.dtype == torch.float32
    expected = spro_advantages(old.bfloat16().double(), ref.double(), mask, rewards, ids, beta=0.5)
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=1e-6)


def test_spro_float_mask_and_empty_batches():
    old, ref, mask, rewards, ids = hand_batch()
    torch.testing.assert_close(spro_advantages(old, ref, mask.double(), rewards, ids, beta=0.5),
                               spro_advantages(old, ref, mask, rewards, ids, beta=0.5), rtol=0, atol=0)
    assert spro_advantages(old[:, :0], ref[:, :0], mask[:, :0], rewards, ids, beta=0.5).shape == (4, 0)
    empty = torch.zeros(0, 3)
    assert spro_advantages(empty, empty, empty.bool(), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                           beta=0.5).shape == (0, 3)


# ---------------------------------------------------------------- bad input: one clear message each

@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "ref_logprobs": a["ref_logprobs"][:, :3]}, "ref_logprobs has shape"),
    (lambda a: {**a, "old_logprobs": a["old_logprobs"][0]}, "old_logprobs must be 2-D"),
    (lambda a: {**a, "old_logprobs": a["old_logprobs"].long()}, "old_logprobs must be a floating-point"),
    (lambda a: {**a, "rewards": a["rewards"][:3]}, r"rewards must have shape \[B\] = \[4\], got \(3,\)"),
    (lambda a: {**a, "group_ids": a["group_ids"].float()}, "group_ids must be an integer tensor"),
    (lambda a: {**a, "group_ids": a["group_ids"][:2]}, r"group_ids must have shape \[B\] = \[4\], got \(2,\)"),
    (lambda a: {**a, "response_mask": a["response_mask"][:, :2]}, "response_mask has shape"),
    (lambda a: {**a, "response_mask": a["response_mask"].float() * 2}, "must hold only 0 and 1"),
    (lambda a: {**a, "response_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]]).bool()},
     r"prefix of ones in every row .* rows \[1, 3\]"),
    (lambda a: {**a, "rewards": torch.tensor([1.0, NAN, 0.0, 0.0])}, "rewards must be finite"),
    (lambda a: {**a, "beta": float("inf")}, "beta must be a finite real number"),
    (lambda a: {**a, "baseline": "median"}, "baseline must be one of 'mean', 'leave_one_out'"),
    (lambda a: {**a, "eps": -1.0}, "eps must be >= 0"),
    (lambda a: {**a, "group_ids": a["group_ids"].to("meta")}, "all inputs must be on one device"),
    (lambda a: {**a, "rewards": a["rewards"].to("meta")}, "rewards on meta"),
])
def test_spro_rejects_bad_input(change, message):
    old, ref, mask, rewards, ids = hand_batch()
    args = dict(old_logprobs=old, ref_logprobs=ref, response_mask=mask, rewards=rewards, group_ids=ids, beta=0.5,
                baseline="mean", eps=1e-6)
    with pytest.raises((ValueError, TypeError), match=message):
        spro_advantages(**change(args))


@pytest.mark.gpu
def test_spro_on_cuda_matches_cpu():
    rng = random.Random(5)
    for _ in range(10):
        tensors = as_tensors(*random_batch(rng), torch.float64)
        cpu = spro_advantages(*tensors, beta=0.3)
        cuda = spro_advantages(*(t.cuda() for t in tensors), beta=0.3)
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-9, atol=1e-10)
