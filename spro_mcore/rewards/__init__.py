"""Outcome rewards: verifiers (math-verify, the synthetic task), user functions by name, time-limited scoring."""

from spro_mcore.rewards.registry import BUILTIN_REWARDS, RewardFn, resolve_reward_fn
from spro_mcore.rewards.scoring import ScoreResult, VerifierTimeout, call_with_timeout, score_responses

__all__ = [
    "BUILTIN_REWARDS",
    "RewardFn",
    "ScoreResult",
    "VerifierTimeout",
    "call_with_timeout",
    "resolve_reward_fn",
    "score_responses",
]
