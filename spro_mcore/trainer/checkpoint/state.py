"""The Megatron half of a training checkpoint: policy weights, optimizer state and LR schedule as ONE
megatron-core dist checkpoint (sharded_state_dict), saved synchronously or asynchronously and loaded at any
TP/PP/DP layout (dist checkpoints reshard).

The model is stored under the same keys as `models.mcore_checkpoint` ("model", or "model<i>" per virtual
pipeline chunk), so a training checkpoint also loads as `model.path` and converts to HF with
`spro-mcore convert mcore-to-hf`. The distributed optimizer is saved in the `fully_reshardable` format
(model-space tensors; the only one of megatron-core 0.16's formats that survives a TP/PP change).
"""

from __future__ import annotations

from typing import Optional

import torch

from spro_mcore.models.hf_checkpoint import CheckpointError
from spro_mcore.models.mcore_checkpoint import _sharded_state_dict
from spro_mcore.models.unwrap import as_list, unwrap

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def sharded_training_state(actor, *, is_loading: bool) -> dict:
    state = _sharded_state_dict(actor.model)
    state["optimizer"] = actor.optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=OPTIM_METADATA)
    state["scheduler"] = actor.scheduler.state_dict()
    return state


def save_training_state(actor, ckpt_dir: str, *, async_save: bool = False):
    """Collective. Returns megatron-core's AsyncRequest when `async_save` (schedule it on an
    AsyncCallsQueue; the files are complete only once it is finalized), else None."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.save(sharded_training_state(actor, is_loading=False), ckpt_dir,
                                   async_sharded_save=async_save, content_metadata=dict(OPTIM_METADATA))


@torch.no_grad()
def load_training_state(actor, ckpt_dir: str) -> None:
    """Collective: fill the actor's model chunks, optimizer and scheduler from `ckpt_dir`."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    for opt in _optimizers(actor.optimizer):
        if hasattr(opt, "_set_main_param_and_optimizer_states"):  # the DistributedOptimizer
            _allocate_adam_state(opt.optimizer)
    request = sharded_training_state(actor, is_loading=True)
    try:
        state = dist_checkpointing.load(request, ckpt_dir)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # missing shards, unreshardable layout, unreadable files
        raise CheckpointError(f"cannot load training checkpoint {ckpt_dir}: {type(e).__name__}: {e}") from e
    chunks = [unwrap(m) for m in as_list(actor.model)]
    if len(chunks) == 1:
        chunks[0].load_state_dict(state["model"])
    else:
        for i, c in enumerate(chunks):
            c.load_state_dict(state[f"model{i}"])
    with _adam_step_kept(actor.optimizer):
        actor.optimizer.load_state_dict(state["optimizer"])
    actor.scheduler.load_state_dict(state["scheduler"])


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


def optimizer_step_count(actor) -> Optional[int]:
    """Optimizer steps taken so far (from the LR schedule), to tell whether the weights moved."""
    return getattr(actor.scheduler, "num_steps", None)
