"""Score groups of responses against their prompts' answers with the configured reward function."""

from __future__ import annotations

from spro_mcore.errors import UserError
from spro_mcore.rewards.registry import resolve_reward_fn
from spro_mcore.rewards.scoring import score_responses


class GroupScorer:
    def __init__(self, reward_fn: str, *, timeout_s: float):
        try:
            self.fn = resolve_reward_fn(reward_fn)
        except ValueError as e:
            raise UserError(f"data.reward_fn: {e}") from None
        self.timeout_s = timeout_s

    def score_groups(self, texts: list[list[str]], prompts) -> tuple[list[list[float]], dict[str, float]]:
        """`texts[i]` are the responses to `prompts[i]` (data.PromptItem: `.answer`, `.metadata`)."""
        flat = [t for group in texts for t in group]
        answers = [p.answer for p, group in zip(prompts, texts) for _ in group]
        meta = [p.metadata for p, group in zip(prompts, texts) for _ in group]
        result = score_responses(self.fn, flat, answers, meta, timeout_s=self.timeout_s)
        rewards, k = [], 0
        for group in texts:
            rewards.append(result.rewards[k:k + len(group)])
            k += len(group)
        return rewards, result.metrics()
