"""The megatron-core policy's sharded state: weights, optimizer state and LR schedule as ONE sharded state dict
(written by `models.dist_checkpoint`, loadable at any TP/PP/DP layout: dist checkpoints reshard).

The model is stored under the same keys as `models.mcore_checkpoint` ("model", or "model<i>" per virtual
pipeline chunk), so a training checkpoint also loads as `model.path` and converts to HF with
`spro-mcore convert mcore-to-hf`. The distributed optimizer is saved in the `fully_reshardable` format
(model-space tensors; the only one of megatron-core 0.16's formats that survives a TP/PP change).
"""

from __future__ import annotations

import torch

from spro_mcore.models.dist_checkpoint import CONTENT_METADATA
from spro_mcore.models.mcore_checkpoint import _sharded_state_dict
from spro_mcore.models.unwrap import as_list, unwrap


def _optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def sharded_training_state(model, optimizer, scheduler, *, is_loading: bool) -> dict:
    if is_loading:
        for opt in _optimizers(optimizer):
            if hasattr(opt, "_set_main_param_and_optimizer_states"):  # the DistributedOptimizer
                _allocate_adam_state(opt.optimizer)
    state = _sharded_state_dict(model)
    state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=CONTENT_METADATA)
    state["scheduler"] = scheduler.state_dict()
    return state


@torch.no_grad()
def load_training_state(model, optimizer, scheduler, state: dict) -> None:
    """Fill the model chunks, optimizer and scheduler from a loaded `sharded_training_state`."""
    chunks = [unwrap(m) for m in as_list(model)]
    if len(chunks) == 1:
        chunks[0].load_state_dict(state["model"])
    else:
        for i, c in enumerate(chunks):
            c.load_state_dict(state[f"model{i}"])
    with _adam_step_kept(optimizer):
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


# ---- megatron-core 0.16.1 + plain torch Adam (no Apex / Transformer Engine) ----------------------------
# Three gaps on that path, all about torch Adam's per-parameter "step" tensor:
# 1. a fresh DistributedOptimizer has no state, and its state_dict() (needed to build the load request)
#    asserts that every parameter has a "step";
# 2. its load_state_dict() puts ONE shared "step" tensor into every parameter's state (Adam would then
#    increment it once per parameter per step), and the per-parameter loaders copy a "step" that the
#    fully_reshardable format does not store (KeyError) or that is stale (dp_reshardable);
# 3. the right value is the param groups' "step", which load_state_dict() already applied.


def _allocate_adam_state(inner: torch.optim.Optimizer) -> None:
    for group in inner.param_groups:
        for p in group["params"]:
            st = inner.state[p]
            if not st:
                st["step"] = torch.zeros((), dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class _adam_step_kept:
    def __init__(self, optimizer):
        self.all = _optimizers(optimizer)
        self.distributed = [o for o in self.all if hasattr(o, "_set_main_param_and_optimizer_states")]

    def __enter__(self):
        for o in self.distributed:
            original = o._set_main_param_and_optimizer_states

            def keep_step(model_param, tensors, o=o, original=original):
                gi, go = o.model_param_group_index_map[model_param]
                current = o.optimizer.state[o.optimizer.param_groups[gi]["params"][go]]
                tensors = {k: v for k, v in tensors.items() if k != "step"}
                if "step" in current:
                    tensors["step"] = current["step"]
                original(model_param, tensors)

            o._set_main_param_and_optimizer_states = keep_step
        return self

    def __exit__(self, *exc):
        for o in self.distributed:
            o.__dict__.pop("_set_main_param_and_optimizer_states", None)
        for o in self.all:
            inner = getattr(o, "optimizer", None)
            if inner is not None:
                for st in inner.state.values():
                    if "step" in st:
                        st["step"] = st["step"].clone()  # one tensor per parameter again
        return False

