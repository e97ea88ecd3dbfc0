"""PAV's advantage (GRPO term + alpha * progress of each token's step under a Best-of-K prover) against a
slow loop reference written from PAV.md, alpha = 0 against GRPO, and the telescoping identity on an exact
toy MDP (prover = policy, exact Q: the progress of a response sums to Q(final) - V(prompt), and each step's
progress has expectation 0 under the policy)."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from spro_mcore.algo.advantages import grpo_outcome_advantages, outcome_on_tokens
from spro_mcore.algo.pav_advantages import pav_advantage_terms
from spro_mcore.algo.registry import compute_advantages, estimator_options, process_inputs
from tests.algo.test_advantages import reference_grpo

pytestmark = pytest.mark.unit


def reference_pav(mask, rewards, group_ids, step_index, step_q, prompt_value, alpha, k, std_normalize, eps):
    outcome = reference_grpo(rewards, group_ids, std_normalize, eps)
    out = [[0.0] * len(mask[0]) for _ in mask]
    for i, row in enumerate(mask):
        for t, alive in enumerate(row):
            if not alive:
                continue
            h = step_index[i][t]
            q_after = 1 - (1 - step_q[i][h]) ** k
            q_before = 1 - (1 - (prompt_value[i] if h == 0 else step_q[i][h - 1])) ** k
            out[i][t] = outcome[i] + alpha * (q_after - q_before)
    return out


def random_batch(rng: random.Random, *, batch=9, width=12, max_steps=6, reward_mode="mixed"):
    """Uneven groups in shuffled order, one-token steps, one-step responses, padded step_q holding NaN."""
    sizes = [rng.randint(1, 4) for _ in range(batch)]
    group_ids = [g for g, n in enumerate(sizes) for _ in range(n)][:batch]
    rng.shuffle(group_ids)
    lengths = [rng.randint(0, width) for _ in range(batch)]
    mask, step_index, num_steps = [], [], []
    for n in lengths:
        steps = rng.choice([1, rng.randint(1, max(1, min(n, max_steps)))]) if n else 1
        cuts = sorted(rng.sample(range(1, n), min(steps - 1, max(n - 1, 0)))) if n > 1 else []
        idx, h = [], 0
        for t in range(n):
            while h < len(cuts) and t >= cuts[h]:
                h += 1
            idx.append(h)
        num_steps.append(len(cuts) + 1)
        mask.append([1] * n + [0] * (width - n))
        step_index.append(idx + [rng.randint(-5, 50)] * (width - n))  # garbage on padding
    s = max(num_steps)
    step_q = [[rng.random() if h < num_steps[i] else float("nan") for h in range(s)] for i in range(batch)]
    prompt_value = [rng.random() for _ in range(batch)]
    if reward_mode == "mixed":
        rewards = [float(rng.random() < 0.5) for _ in range(batch)]
    else:
        rewards = [1.0 if reward_mode == "correct" else 0.0] * batch
    return mask, rewards, group_ids, step_index, step_q, prompt_value


def as_tensors(mask, rewards, group_ids, step_index, step_q, prompt_value, dtype=torch.float64):
    return (torch.tensor(mask, dtype=torch.bool), torch.tensor(rewards, dtype=dtype), torch.tensor(group_ids),
            torch.tensor(step_index), torch.tensor(step_q, dtype=dtype), torch.tensor(prompt_value, dtype=dtype))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("reward_mode", ["mixed", "correct", "wrong"])
def test_matches_loop_reference_on_random_batches(seed, reward_mode):
    rng = random.Random(seed)
    raw = random_batch(rng, reward_mode=reward_mode)
    alpha, k, std = rng.choice([0.5, 3.0, 5.0]), rng.choice([1, 2, 4]), rng.random() < 0.7
    mask, rewards, ids, idx, q, v = as_tensors(*raw)
    got, outcome = pav_advantage_terms(mask, rewards, ids, step_index=idx, step_q=q, prompt_value=v,
                                       alpha=alpha, prover_k=k, std_normalize=std, eps=1e-6)
    want = torch.tensor(reference_pav(*raw, alpha, k, std, 1e-6), dtype=torch.float64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if reward_mode != "mixed":  # all-correct / all-wrong groups: the outcome term is 0, progress remains
        assert torch.equal(outcome, torch.zeros_like(outcome))


def test_by_hand():
    # one group of two: rewards 1, 0 (Dr. GRPO outcome +-0.5); K = 2, alpha = 2
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    idx = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]])
    q = torch.tensor([[0.5, 1.0], [0.0, float("nan")]], dtype=torch.float64)
    v = torch.tensor([0.0, 0.5], dtype=torch.float64)
    adv, _ = pav_advantage_terms(mask, torch.tensor([1.0, 0.0]), torch.tensor([7, 7]), step_index=idx, step_q=q,
                                 prompt_value=v, alpha=2.0, prover_k=2, std_normalize=False)
    # BoK2: 0 -> 0, 0.5 -> 0.75, 1 -> 1. Row 0: steps +0.75, +0.25; row 1: 0 - 0.75 = -0.75
    want = torch.tensor([[0.5 + 1.5, 0.5 + 0.5, 0.5 + 0.5, 0], [-0.5 - 1.5, -0.5 - 1.5, 0, 0]], dtype=torch.float64)
    assert torch.equal(adv, want)


@pytest.mark.parametrize("seed", range(5))
def test_alpha_zero_is_grpo_exactly(seed):
    raw = random_batch(random.Random(100 + seed))
    mask, rewards, ids, idx, q, v = as_tensors(*raw, dtype=torch.float32)
    for std in (True, False):
        got, _ = compute_advantages("pav", old_logprobs=None, ref_logprobs=None, response_mask=mask, rewards=rewards,
                                    group_ids=ids, process=dict(step_index=idx, step_q=q, prompt_value=v),
                                    pav_alpha=0.0, pav_prover_k=4, std_normalize=std)
        grpo, _ = compute_advantages("grpo", old_logprobs=None, ref_logprobs=None, response_mask=mask,
                                     rewards=rewards, group_ids=ids, std_normalize=std)
        assert torch.equal(got, grpo)
        assert torch.equal(grpo, outcome_on_tokens(grpo_outcome_advantages(rewards, ids, std_normalize=std), mask))


# ---------------------------------------------------------------- exact Q on a toy MDP (telescoping)

def toy_mdp(rng: random.Random, depth=3, branching=3):
    """A tree of steps: policy probabilities per edge, reward 0/1 at each leaf; Q by exact expectation."""
    probs, reward, value = {}, {}, {}
    for path in itertools.product(range(branching), repeat=depth):
        reward[path] = float(rng.random() < 0.5)
    for d in range(depth, -1, -1):
        for path in itertools.product(range(branching), repeat=d):
            if d == depth:
                value[path] = reward[path]
                continue
            w = [rng.random() + 0.05 for _ in range(branching)]
            probs[path] = [x / sum(w) for x in w]
            value[path] = sum(p * value[path + (a,)] for a, p in enumerate(probs[path]))
    return probs, reward, value


def test_progress_telescopes_with_prover_equal_policy_and_exact_q():
    rng = random.Random(0)
    depth, branching = 3, 3
    probs, reward, value = toy_mdp(rng, depth, branching)
    leaves = list(itertools.product(range(branching), repeat=depth))
    # every leaf is one response; step h has h+1 tokens (so steps differ in length)
    width = sum(h + 1 for h in range(depth))
    idx_row = [h for h in range(depth) for _ in range(h + 1)]
    b = len(leaves)
    mask = torch.ones(b, width, dtype=torch.bool)
    idx = torch.tensor([idx_row] * b)
    q = torch.tensor([[value[leaf[:h + 1]] for h in range(depth)] for leaf in leaves], dtype=torch.float64)
    v = torch.full((b,), value[()], dtype=torch.float64)
    rewards = torch.tensor([reward[leaf] for leaf in leaves], dtype=torch.float64)
    alpha = 3.0
    adv, outcome = pav_advantage_terms(mask, rewards, torch.arange(b), step_index=idx, step_q=q, prompt_value=v,
                                       alpha=alpha, prover_k=1)
    assert torch.equal(outcome, torch.zeros(b, dtype=torch.float64))  # one response per group: pure progress
    first_token = [idx_row.index(h) for h in range(depth)]
    step_progress = adv[:, first_token] / alpha  # [B, H]
    # telescoping: sum_h A^pi = Q(final) - V(prompt) = reward - V(prompt)
    torch.testing.assert_close(step_progress.sum(1), rewards - value[()], rtol=0, atol=1e-12)
    # prover = policy: every step's progress has expectation 0 under the policy (no signal beyond outcome)
    weight = torch.tensor([probs[()][leaf[0]] * probs[leaf[:1]][leaf[1]] * probs[leaf[:2]][leaf[2]]
                           for leaf in leaves], dtype=torch.float64)
    torch.testing.assert_close((weight[:, None] * step_progress).sum(0), torch.zeros(depth, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # a Best-of-4 prover differs from the policy: its progress does not average to 0 everywhere
    adv4, _ = pav_advantage_terms(mask, rewards, torch.arange(b), step_index=idx, step_q=q, prompt_value=v,
                                  alpha=alpha, prover_k=4)
    assert (weight[:, None] * adv4[:, first_token]).sum(0).abs().max() > 1e-3


def test_registry_describes_pav():
    assert estimator_options("pav") == {"pav_alpha": __import__("inspect").Parameter.empty,
                                        "pav_prover_k": __import__("inspect").Parameter.empty,
                                        "std_normalize": True, "eps": 1e-6}
    assert process_inputs("pav") == ("step_index", "step_q", "prompt_value")
    assert process_inputs("spro") == ()


@pytest.mark.parametrize("change, message", [
    (dict(step_index=torch.tensor([[0, 2]])), "step_index must lie in"),
    (dict(step_index=torch.tensor([[0.0, 0.0]])), "integer"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(prompt_value=torch.tensor([0.5, 0.5])), "prompt_value"),
])
def test_bad_inputs_name_the_problem(change, message):
    kw = dict(step_index=torch.tensor([[0, 1]]), step_q=torch.tensor([[0.2, 0.4]]), prompt_value=torch.tensor([0.1]),
              alpha=1.0)
    kw.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        pav_advantage_terms(torch.ones(1, 2, dtype=torch.bool), torch.tensor([1.0]), torch.tensor([0]), **kw)


def test_compute_advantages_demands_the_process_inputs():
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="process inputs"):
        compute_advantages("pav", old_logprobs=None, ref_logprobs=None, response_mask=mask,
                           rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]), pav_alpha=1.0, pav_prover_k=1)
    with pytest.raises(ValueError, match="process inputs"):
        compute_advantages("grpo", old_logprobs=None, ref_logprobs=None, response_mask=mask,
                           rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]),
                           process={"step_q": torch.zeros(1, 1)})
