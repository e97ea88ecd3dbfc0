"""Pure tensor math of the RL algorithms: advantage estimators, PPO losses, KL, aggregation, PAV step splitting
and progress. No torch.distributed."""
from spro_mcore.algo.advantage_metrics import advantage_metrics
from spro_mcore.algo.advantages import (
    grpo_outcome_advantages,
    msa_plus_outcome,
    outcome_on_tokens,
    spro_advantage_terms,
    spro_advantages,
)
from spro_mcore.algo.aggregation import LOSS_AGG_MODES, aggregate, local_counts
from spro_mcore.algo.importance_sampling import truncated_is_weights
from spro_mcore.algo.kl import KL_ESTIMATORS, kl_penalty
from spro_mcore.algo.policy_loss import ppo_policy_loss
from spro_mcore.algo.pav_advantages import pav_advantage_terms
from spro_mcore.algo.progress import beam_score, bok_q, mc_q_hat, progress
from spro_mcore.algo.registry import (
    available_estimators,
    compute_advantages,
    estimator_options,
    get_estimator,
    register_estimator,
)
from spro_mcore.algo.step_split import StepSplit, split_steps, splitter_pattern

__all__ = [
    "KL_ESTIMATORS", "LOSS_AGG_MODES", "StepSplit", "beam_score", "bok_q", "mc_q_hat", "progress", "split_steps",
    "splitter_pattern", "advantage_metrics", "aggregate", "available_estimators",
    "compute_advantages", "estimator_options", "get_estimator", "grpo_outcome_advantages", "kl_penalty",
    "local_counts", "msa_plus_outcome", "pav_advantage_terms", "outcome_on_tokens", "ppo_policy_loss", "register_estimator",
    "spro_advantage_terms", "spro_advantages", "truncated_is_weights",
]
