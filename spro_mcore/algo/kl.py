"""Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL divergence").

With log_ratio = log pi(a) - log pi_ref(a) on tokens sampled from pi:
  k1 = log_ratio                               unbiased, high variance, can be negative
  k2 = log_ratio ** 2 / 2                      biased, low variance, >= 0
  k3 = exp(-log_ratio) - 1 + log_ratio         unbiased, low variance, >= 0 ("low_var_kl")
Gradients flow through logprobs; ref_logprobs is treated as a constant.
"""
from __future__ import annotations

import torch
from torch import Tensor

from spro_mcore.algo.validation import check_choice, check_same_device, check_token_matrix

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL estimate [B, T] (padding positions hold whatever the inputs give; mask downstream)."""
    logprobs = check_token_matrix("logprobs", logprobs)
    ref_logprobs = check_token_matrix("ref_logprobs", ref_logprobs, tuple(logprobs.shape))
    check_same_device(logprobs=logprobs, ref_logprobs=ref_logprobs)
    check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    log_ratio = logprobs - ref_logprobs.detach()
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio * log_ratio
    return torch.exp(-log_ratio) - 1.0 + log_ratio
