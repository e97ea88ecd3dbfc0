"""PAV's RL advantage: the GRPO outcome term plus alpha times the progress of each token's step under a prover.

Definitions (shared/spec/PAV.md, "Uses" 1): for response i with steps h = 1..H_i,

    A_{i,t} = response_mask[i,t] * ( A^GRPO_i + alpha * A^mu_{i,h(t)} ),
    A^mu_{i,h} = Q^mu_{i,h} - Q^mu_{i,h-1},   Q^mu_{i,0} = V^mu(prompt),   Q^mu = 1 - (1 - Q^pi)^K (Best-of-K).

Inputs are tensors only (where they came from -- a trained verifier's forward pass or Monte-Carlo
continuations -- is the trainer's business):
- `step_index` [B, T] int: h(t) - 1, the 0-based step of every response token (ignored on padding);
- `step_q` [B, S] float: Q^pi after each step, S >= the largest step count (entries past a response's
  last step are ignored);
- `prompt_value` [B] float: V^pi of the prompt, the value before the first step.
K = 1 makes the prover the policy itself (its progress telescopes to Q(final) - V(prompt)). Pure: no model.
"""
from __future__ import annotations

import torch
from torch import Tensor

from spro_mcore.algo.advantages import _checked_outcome, _work_dtype
from spro_mcore.algo.progress import bok_q, progress
from spro_mcore.algo.validation import (
    as_bool_mask,
    check_per_sequence,
    check_real,
    check_same_device,
    check_token_matrix,
    require_tensor,
)


@torch.no_grad()
def pav_step_progress(step_q: Tensor, prompt_value: Tensor, *, prover_k: int = 1) -> Tensor:
    """A^mu per step [B, S] from Q^pi after each step [B, S] and V^pi of the prompt [B] (BoK prover, K)."""
    q = torch.cat([prompt_value[:, None], step_q], dim=1)
    return progress(bok_q(q, prover_k))


@torch.no_grad()
def pav_advantage_terms(response_mask: Tensor, rewards: Tensor, group_ids: Tensor, *, step_index: Tensor,
                        step_q: Tensor, prompt_value: Tensor, alpha: float, prover_k: int = 1,
                        std_normalize: bool = True, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(token advantages [B, T], outcome term [B]) of PAV's estimator; see the module docstring."""
    step_q = check_token_matrix("step_q", step_q)
    batch, steps = step_q.shape
    index = require_tensor("step_index", step_index)
    if index.dim() != 2 or index.shape[0] != batch:
        raise ValueError(f"step_index must be [B, T] with B = {batch}, got {tuple(index.shape)}")
    if index.is_floating_point() or index.dtype == torch.bool:
        raise TypeError(f"step_index must be an integer tensor, got {index.dtype}")
    shape = tuple(index.shape)
    mask = as_bool_mask("response_mask", response_mask, shape)
    prompt_value = check_per_sequence("prompt_value", prompt_value, batch, integer=False)
    check_same_device(step_index=index, step_q=step_q, prompt_value=prompt_value, response_mask=mask)
    alpha = check_real("alpha", alpha)
    dtype = _work_dtype(step_q.dtype, prompt_value.dtype)
    outcome = _checked_outcome(rewards, group_ids, std_normalize, eps, dtype, batch)
    zero = torch.zeros((), dtype=dtype, device=step_q.device)
    if batch == 0 or shape[1] == 0:
        return torch.zeros(shape, dtype=dtype, device=step_q.device), outcome
    used = torch.where(mask, index.long(), torch.zeros((), dtype=torch.long, device=index.device))
    if bool(mask.any()) and (int(used[mask].min()) < 0 or int(used[mask].max()) >= steps):
        raise ValueError(f"step_index must lie in [0, {steps}) on response tokens (step_q has {steps} steps)")
    prog = pav_step_progress(step_q.to(dtype), prompt_value.to(dtype), prover_k=prover_k)
    # padded steps may hold anything (even NaN): only the gathered entries reach the result
    token_progress = prog.gather(1, used)
    out = outcome[:, None] + alpha * token_progress
    return torch.where(mask, out, zero), outcome
