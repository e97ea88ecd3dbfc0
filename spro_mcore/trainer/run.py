"""`spro-mcore train` and `spro-mcore eval`: config -> process groups -> components -> the loop."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from spro_mcore.config import load_config, to_yaml, validate_world_size
from spro_mcore.errors import UserError

log = logging.getLogger("spro_mcore")


def _start(config_path, overrides):
    import torch.distributed as dist

    from spro_mcore.parallel import initialize_model_parallel, init_process_group, seed_everything

    cfg = load_config(config_path, overrides)
    logging.basicConfig(level=cfg.logging.level, format="%(asctime)s %(name)s: %(message)s")
    if cfg.logging.level != "DEBUG":  # megatron-core lists every parameter and config field at INFO
        logging.getLogger("megatron").setLevel(logging.WARNING)
        # deprecation chatter of megatron-core / torch.distributed, once per process and rank
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|CUDA_DEVICE_MAX_CONNECTIONS).*")
    init_process_group(cfg.parallel.timeout_minutes)
    dp = validate_world_size(cfg, dist.get_world_size())
    if cfg.data.prompts_per_step % dp:
        raise UserError(f"data.prompts_per_step = {cfg.data.prompts_per_step} is not divisible by the "
                        f"data-parallel size {dp}: every replica takes the same number of prompts")
    p = cfg.parallel
    layout = initialize_model_parallel(tp=p.tp, pp=p.pp, cp=p.cp, ep=p.ep, vpp=p.vpp, timeout_minutes=p.timeout_minutes)
    seed_everything(cfg.trainer.seed)
    return cfg, layout


def train_main(config_path, overrides) -> int:
    from spro_mcore.parallel import destroy
    from spro_mcore.trainer.checkpoint import Checkpointer
    from spro_mcore.trainer.loop import Trainer
    from spro_mcore.trainer.metrics import MetricsLogger
    from spro_mcore.trainer.setup import build_components

    cfg, layout = _start(config_path, overrides)
    out = Path(cfg.trainer.output_dir)
    if layout.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
    checkpointer = Checkpointer(cfg, layout)
    parts = build_components(cfg, layout, checkpointer=checkpointer)
    trainer = Trainer(cfg, layout, parts)
    logger = MetricsLogger(
        out, total_steps=cfg.trainer.total_steps, enabled=layout.is_main, tensorboard=cfg.logging.tensorboard,
        wandb_project=cfg.logging.wandb_project, progress_bar=cfg.logging.progress_bar, start_step=parts.start_step,
    )
    try:
        with checkpointer.on_preemption(trainer):
            last = trainer.fit(logger, checkpointer)
        checkpointer.finish(trainer)
    finally:
        logger.close()
        if parts.engine is not None:
            parts.engine.close()
    if layout.is_main:
        summary = {k: v for k, v in last.items() if k.startswith(("eval/", "reward/", "step"))}
        print("final: " + json.dumps(summary))
    destroy()
    return 0


def eval_main(config_path, overrides) -> int:
    from spro_mcore.parallel import destroy
    from spro_mcore.trainer.loop import Trainer
    from spro_mcore.trainer.setup import build_components

    cfg, layout = _start(config_path, overrides)
    parts = build_components(cfg, layout, checkpointer=None)
    metrics = Trainer(cfg, layout, parts).evaluate()
    if layout.is_main:
        print(json.dumps(metrics))
    if parts.engine is not None:
        parts.engine.close()
    destroy()
    return 0
