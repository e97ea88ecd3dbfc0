"""Held-out evaluation with the rollout engine: greedy accuracy and pass@k.

A response counts as correct when its reward is >= 1 (the verifiers give 1.0 for a correct final answer).
Greedy decoding is sampling with top_k=1. pass@k with k = n samples per prompt is the fraction of prompts
with at least one correct sample (the unbiased estimator with n = k).
"""

from __future__ import annotations

from spro_mcore.rollout.engine import SamplingParams

CORRECT = 1.0 - 1e-6


def evaluate(engine, prompts, scorer, tokenizer, *, max_new_tokens: int, n: int, temperature: float,
             seed: int) -> dict[str, float]:
    ids = [p.input_ids for p in prompts]
    if not ids:
        return {}

    def correct(groups):
        texts = [[tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in g] for g in groups]
        rewards, _ = scorer.score_groups(texts, prompts)
        return [[r >= CORRECT for r in row] for row in rewards]

    # both generate calls first: on an engine group they are collective, and only its first rank gets groups
    greedy = engine.generate(ids, SamplingParams(n=1, top_k=1, max_new_tokens=max_new_tokens, seed=seed))
    sampled = engine.generate(
        ids, SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed + 1)
    ) if n > 1 else None
    if greedy is None:
        return {}
    greedy = correct(greedy)
    out = {"eval/acc": sum(row[0] for row in greedy) / len(greedy)}
    if sampled is not None:
        sampled = correct(sampled)
        out[f"eval/pass@{n}"] = sum(any(row) for row in sampled) / len(sampled)
        out["eval/sampled_acc"] = sum(sum(row) for row in sampled) / (n * len(sampled))
    return out
