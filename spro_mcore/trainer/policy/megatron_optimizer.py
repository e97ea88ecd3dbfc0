"""Model chunks -> what a megatron-core training step needs: DDP-wrapped chunks, the (distributed) Megatron
Adam and its LR schedule, all from `optim.*`. Shared by the policy and `pav train`'s verifier.

Gradients are summed, not averaged, over data-parallel ranks (`calculate_per_token_loss`): the caller's loss
must already be normalised by its global counts (see `megatron_policy`).
"""

from __future__ import annotations

import torch

from spro_mcore.config.schema import Config


def training_wrappers(chunks: list, cfg: Config, *, total_updates: int):
    """(DDP models, optimizer, scheduler) for `chunks`; the LR decays over `total_updates` optimizer steps."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    for c in chunks:
        c.config.calculate_per_token_loss = True  # the schedule leaves the loss alone and DDP sums
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.optim.use_distributed_optimizer,
    )
    model = [DistributedDataParallel(config=c.config, ddp_config=ddp_cfg, module=c) for c in chunks]
    o = cfg.optim
    dtype = chunks[0].config.params_dtype
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
            use_distributed_optimizer=o.use_distributed_optimizer, params_dtype=dtype,
            bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        ),
        model,
    )
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if o.warmup_steps else o.lr, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=o.warmup_steps, lr_decay_steps=max(total_updates, o.warmup_steps + 1),
        lr_decay_style=o.lr_schedule, start_wd=o.weight_decay, end_wd=o.weight_decay,
        wd_incr_steps=max(total_updates, 1), wd_incr_style="constant",
    )
    return model, optimizer, scheduler
