"""PPO-clip policy loss (GRPO/SPRO), with clip-higher, dual clip, KL-to-reference, entropy bonus and TIS.

Per response token, ratio = exp(logprobs - old_logprobs):
  pg    = max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high))
  pg    = min(pg, -A * c) where A < 0                      (dual clip, when dual_clip_c = c is set)
  pg   *= min(exp(old_logprobs - engine_logprobs), C)      (TIS, when engine_logprobs are given)
  pg   *= MIS weights (masked IS, importance_sampling.py)  (instead of TIS, when mis_level is given)
  token = pg + kl_coef * KL_est(logprobs, ref) - entropy_coef * entropy
and the loss is aggregate(token) with global counts (see aggregation.py): the returned loss is this
micro-batch's additive share of the global-batch loss.

Every metric is an additive share in the same sense: sum each value over the micro-batches of a global batch
and all-reduce (SUM) over data-parallel ranks to get the global-batch value. Token metrics are
sum / global_num_tokens; loss/* use the same loss_agg as the loss. Values are detached 0-dim tensors.
  ppo/ratio_mean, ppo/clipfrac (clipped surrogate active), ppo/approx_kl (mean of old - new),
  loss/policy (the aggregated pg term), loss/kl (aggregated KL estimate, unscaled; when ref_logprobs given),
  entropy/mean (when entropy given), ppo/dual_clipfrac (when dual clip is on),
  tis/weight_mean and tis/capped_frac (TIS), mis/weight_mean and mis/kept_frac (MIS)
"""
from __future__ import annotations

import torch
from torch import Tensor

from spro_mcore.algo.aggregation import LOSS_AGG_MODES, aggregate, check_count
from spro_mcore.algo.importance_sampling import masked_is_weights, truncated_is_weights
from spro_mcore.algo.kl import kl_penalty
from spro_mcore.algo.validation import (
    as_bool_mask,
    check_choice,
    check_real,
    check_same_device,
    check_token_matrix,
)

# exp() guard: a log-ratio beyond +-20 (ratio ~5e8) is clipped anyway unless A < 0 without dual clip
MAX_LOG_RATIO = 20.0


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    global_num_tokens: Tensor | float,
    global_num_seqs: Tensor | float | None = None,
    loss_agg: str = "seq_mean_token_mean",
    norm_len: float | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip_c: float | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    engine_logprobs: Tensor | None = None,
    tis_cap: float = 2.0,
    mis_level: str | None = None,
    mis_low: float = 0.5,
    mis_high: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss share (0-dim, differentiable through logprobs and entropy) and metric shares; all inputs [B, T].

    global_num_tokens is always needed (token metrics); global_num_seqs for the seq_* modes; norm_len for
    seq_mean_token_sum_norm. A correction is on exactly when engine_logprobs is given: MIS at `mis_level`
    ("token" | "sequence") when that is set, else TIS.
    """
    logprobs = check_token_matrix("logprobs", logprobs)
    shape = tuple(logprobs.shape)
    old_logprobs = check_token_matrix("old_logprobs", old_logprobs, shape)
    advantages = check_token_matrix("advantages", advantages, shape)
    mask = as_bool_mask("response_mask", response_mask, shape)
    for name, extra in (("ref_logprobs", ref_logprobs), ("entropy", entropy), ("engine_logprobs", engine_logprobs)):
        if extra is not None:
            check_token_matrix(name, extra, shape)
    check_same_device(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, response_mask=mask,
                      ref_logprobs=ref_logprobs, entropy=entropy, engine_logprobs=engine_logprobs)
    check_choice("loss_agg", loss_agg, LOSS_AGG_MODES)
    num_tokens = check_count("global_num_tokens", global_num_tokens)
    eps_low = check_real("eps_low", eps_low, minimum=0.0)
    eps_high = check_real("eps_high", eps_high, minimum=0.0)
    if eps_low >= 1.0:
        raise ValueError(f"eps_low must be < 1 (the lower clip bound 1 - eps_low must stay positive), got {eps_low}")
    if dual_clip_c is not None:
        dual_clip_c = check_real("dual_clip_c", dual_clip_c, above=1.0)
    kl_coef = check_real("kl_coef", kl_coef, minimum=0.0)
    entropy_coef = check_real("entropy_coef", entropy_coef, minimum=0.0)
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    if mis_level is not None and engine_logprobs is None:
        raise ValueError("mis_level needs engine_logprobs")
    if entropy_coef > 0 and entropy is None:
        raise ValueError("entropy_coef > 0 needs the per-token entropy")

    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    agg = dict(loss_agg=loss_agg, global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs,
               norm_len=norm_len)

    def token_share(x: Tensor) -> Tensor:
        return torch.where(mask, x, zero).sum() / num_tokens

    # padding is zeroed before any nonlinearity so that it can hold anything and gets exactly 0 gradient
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), zero)
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    adv = torch.where(mask, advantages.detach(), zero)
    surr = -adv * ratio
    surr_clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    pg = torch.maximum(surr, surr_clipped)
    metrics: dict[str, Tensor] = {
        "ppo/clipfrac": token_share((surr_clipped > surr).to(logprobs.dtype)),
    }
    if dual_clip_c is not None:
        bound = -adv * dual_clip_c
        dual = (adv < 0) & (pg > bound)
        pg = torch.where(adv < 0, torch.minimum(pg, bound), pg)
        metrics["ppo/dual_clipfrac"] = token_share(dual.to(logprobs.dtype))
    if engine_logprobs is not None and mis_level is not None:
        weights, kept = masked_is_weights(old_logprobs, engine_logprobs, mask, level=mis_level, low=mis_low,
                                          high=mis_high)
        pg = pg * weights
        metrics["mis/weight_mean"] = token_share(weights)
        metrics["mis/kept_frac"] = token_share(kept.to(logprobs.dtype))
    elif engine_logprobs is not None:
        weights = truncated_is_weights(torch.where(mask, old_logprobs, zero), torch.where(mask, engine_logprobs, zero),
                                       tis_cap)
        pg = pg * weights
        metrics["tis/weight_mean"] = token_share(weights)
        metrics["tis/capped_frac"] = token_share((weights >= tis_cap).to(logprobs.dtype))

    loss_policy = aggregate(pg, mask, **agg)
    loss = loss_policy
    if ref_logprobs is not None:
        kl = kl_penalty(torch.where(mask, logprobs, zero), torch.where(mask, ref_logprobs, zero), kl_estimator)
        loss_kl = aggregate(kl, mask, **agg)
        if kl_coef > 0:
            loss = loss + kl_coef * loss_kl
        metrics["loss/kl"] = loss_kl.detach()
    if entropy is not None:
        entropy = torch.where(mask, entropy, zero)
        if entropy_coef > 0:
            loss = loss - entropy_coef * aggregate(entropy, mask, **agg)
        metrics["entropy/mean"] = token_share(entropy.detach())

    with torch.no_grad():
        metrics["ppo/ratio_mean"] = token_share(ratio)
        metrics["ppo/approx_kl"] = token_share(-log_ratio)
        metrics["loss/policy"] = loss_policy.detach()
        metrics = {k: v.detach() for k, v in metrics.items()}
    return loss, metrics
