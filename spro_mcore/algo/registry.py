"""Advantage estimators chosen by name, and the one call the trainer makes per step.

    adv, metrics = compute_advantages("spro", old_logprobs=..., ref_logprobs=..., response_mask=...,
                                      rewards=..., group_ids=..., beta=0.1, baseline="mean")

An estimator is registered with @register_estimator(name). It takes the batch as keyword tensors
(old_logprobs, ref_logprobs, response_mask, rewards, group_ids) plus its own keyword-only options, and
returns (token advantages [B, T], outcome term [B]); the outcome term feeds advantage_metrics.
estimator_options(name) lists the options, so a trainer can pick them from its config by name. An estimator
that needs per-step process inputs beyond the batch (PAV: step_index, step_q, prompt_value) declares them as
keyword-only parameters named in PROCESS_KEYS; the trainer passes them as `process=` (see process_inputs).
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable

import torch
from torch import Tensor

from spro_mcore.algo.advantage_metrics import advantage_metrics
from spro_mcore.algo.advantages import grpo_outcome_advantages, outcome_on_tokens, spro_advantage_terms
from spro_mcore.algo.msa_balance import balanced_spro_terms
from spro_mcore.algo.pav_advantages import pav_advantage_terms

Estimator = Callable[..., tuple[Tensor, Tensor]]
BATCH_KEYS = ("old_logprobs", "ref_logprobs", "response_mask", "rewards", "group_ids")
PROCESS_KEYS = ("step_index", "step_q", "prompt_value")
_ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    def add(fn: Estimator) -> Estimator:
        if name in _ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        missing = [k for k in BATCH_KEYS if k not in inspect.signature(fn).parameters]
        if missing:
            raise TypeError(f"estimator {name!r} must accept the batch keywords {BATCH_KEYS}; missing {missing}")
        _ESTIMATORS[name] = fn
        return fn
    return add


def available_estimators() -> tuple[str, ...]:
    return tuple(sorted(_ESTIMATORS))


def get_estimator(name: str) -> Estimator:
    if name not in _ESTIMATORS:
        close = difflib.get_close_matches(str(name), _ESTIMATORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown advantage estimator {name!r}{hint}; available: {', '.join(available_estimators())}")
    return _ESTIMATORS[name]


def estimator_options(name: str) -> dict[str, object]:
    """The estimator's options and their defaults (inspect.Parameter.empty where required)."""
    params = inspect.signature(get_estimator(name)).parameters
    return {k: p.default for k, p in params.items()
            if p.kind is p.KEYWORD_ONLY and k not in BATCH_KEYS and k not in PROCESS_KEYS}


def process_inputs(name: str) -> tuple[str, ...]:
    """The per-step process inputs estimator `name` needs besides the batch (empty for grpo and spro)."""
    return tuple(k for k in inspect.signature(get_estimator(name)).parameters if k in PROCESS_KEYS)


@torch.no_grad()
def compute_advantages(name: str, *, old_logprobs: Tensor | None, ref_logprobs: Tensor | None,
                       response_mask: Tensor, rewards: Tensor, group_ids: Tensor,
                       process: dict[str, Tensor] | None = None,
                       **options: object) -> tuple[Tensor, dict[str, Tensor]]:
    """Token advantages [B, T] of estimator `name` and the adv/* metrics, in one call."""
    estimator = get_estimator(name)
    process = dict(process or {})
    needed = process_inputs(name)
    if set(process) != set(needed):
        raise ValueError(f"estimator {name!r} takes the process inputs {needed or '()'}; got {tuple(sorted(process))}")
    valid = estimator_options(name)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown option {key!r} for estimator {name!r}{hint}; valid: {', '.join(valid)}")
    for key, default in valid.items():
        if default is inspect.Parameter.empty and key not in options:
            raise ValueError(f"estimator {name!r} needs option {key!r}")
    advantages, outcome = estimator(old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                                    response_mask=response_mask, rewards=rewards, group_ids=group_ids, **process,
                                    **options)
    return advantages, advantage_metrics(advantages, outcome, response_mask, group_ids)


@register_estimator("grpo")
def _grpo(*, old_logprobs: Tensor | None, ref_logprobs: Tensor | None, response_mask: Tensor, rewards: Tensor,
          group_ids: Tensor, std_normalize: bool = True, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """GRPO / Dr. GRPO: the outcome advantage on every response token (log-probs unused)."""
    outcome = grpo_outcome_advantages(rewards, group_ids, std_normalize=std_normalize, eps=eps)
    return outcome_on_tokens(outcome, response_mask), outcome


@register_estimator("spro")
def _spro(*, old_logprobs: Tensor | None, ref_logprobs: Tensor | None, response_mask: Tensor, rewards: Tensor,
          group_ids: Tensor, beta: float, std_normalize: bool = True, eps: float = 1e-6,
          baseline: str = "mean") -> tuple[Tensor, Tensor]:
    """SPRO: GRPO outcome term + Masked Step Advantage of the self-guided process reward."""
    return spro_advantage_terms(old_logprobs, ref_logprobs, response_mask, rewards, group_ids, beta=beta,
                                std_normalize=std_normalize, eps=eps, baseline=baseline)


@register_estimator("spro_balanced")
def _spro_balanced(*, old_logprobs: Tensor | None, ref_logprobs: Tensor | None, response_mask: Tensor,
                   rewards: Tensor, group_ids: Tensor, msa_ratio: float, std_normalize: bool = True,
                   eps: float = 1e-6, baseline: str = "mean") -> tuple[Tensor, Tensor]:
    """A variant, not the paper's: SPRO's MSA rescaled per batch to msa_ratio x the outcome term's size."""
    return balanced_spro_terms(old_logprobs, ref_logprobs, response_mask, rewards, group_ids, msa_ratio=msa_ratio,
                               std_normalize=std_normalize, eps=eps, baseline=baseline)


@register_estimator("pav")
def _pav(*, old_logprobs: Tensor | None, ref_logprobs: Tensor | None, response_mask: Tensor, rewards: Tensor,
         group_ids: Tensor, step_index: Tensor, step_q: Tensor, prompt_value: Tensor, pav_alpha: float,
         pav_prover_k: int, std_normalize: bool = True, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """PAV: GRPO outcome term + pav_alpha * progress of each token's step under the Best-of-K prover."""
    return pav_advantage_terms(response_mask, rewards, group_ids, step_index=step_index, step_q=step_q,
                               prompt_value=prompt_value, alpha=pav_alpha, prover_k=pav_prover_k,
                               std_normalize=std_normalize, eps=eps)
