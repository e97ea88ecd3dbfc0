"""`spro-mcore train` and `spro-mcore eval`: config -> start-up checks -> process groups -> components -> the
loop.

Order matters for bad input: the config and every path it names are checked first (`preflight`, before
torch or megatron are imported), then the output folder is locked against a second trainer, and only then
come process groups, models and engines. Nothing in the output folder is changed before the run has started.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from spro_mcore.config import load_config, to_yaml, validate_world_size
from spro_mcore.errors import UserError

log = logging.getLogger("spro_mcore")


def _load(config_path, overrides):
    """The validated config, with logging set up (and the quiet start installed) as it asks."""
    from spro_mcore import quiet

    cfg = load_config(config_path, overrides)
    quiet.install(cfg.logging.level)
    logging.basicConfig(level=cfg.logging.level, format="%(asctime)s %(name)s: %(message)s")
    if cfg.logging.level != "DEBUG":  # megatron-core lists every parameter and config field at INFO
        logging.getLogger("megatron").setLevel(logging.WARNING)
    return cfg


def _prepare(config_path, overrides, *, training: bool):
    """The validated config, with every path and plugin it names checked; no heavy import yet."""
    from spro_mcore.trainer.preflight import preflight

    cfg = _load(config_path, overrides)
    preflight(cfg, training=training)
    return cfg


def start(config_path, overrides):
    """(config, layout) for a command that brings its own checks (the pav verbs): the config as `train` loads
    it, then the job's process groups."""
    cfg = _load(config_path, overrides)
    return cfg, _start(cfg)


def _start(cfg):
    import torch.distributed as dist

    from spro_mcore.parallel import initialize_model_parallel, init_process_group, seed_everything

    init_process_group(cfg.parallel.timeout_minutes)
    dp = validate_world_size(cfg, dist.get_world_size())
    if cfg.data.prompts_per_step % dp:
        raise UserError(f"data.prompts_per_step = {cfg.data.prompts_per_step} is not divisible by the "
                        f"data-parallel size {dp}: every replica takes the same number of prompts")
    p = cfg.parallel
    layout = initialize_model_parallel(tp=p.tp, pp=p.pp, cp=p.cp, ep=p.ep, vpp=p.vpp, timeout_minutes=p.timeout_minutes)
    seed_everything(cfg.trainer.seed)
    return layout


def _is_main_process() -> bool:
    """Rank 0 of the job, known from torchrun's environment before any process group exists."""
    return os.environ.get("RANK", "0") == "0"


def _banner(cfg, layout, parts) -> str:
    from spro_mcore import quiet

    r = cfg.rollout
    start = f"resuming at step {parts.start_step}" if parts.start_step else "from step 0"
    log.info(quiet.megatron_impl_line())
    return (f"train: model {cfg.model.path} ({cfg.model.dtype}) | layout world {layout.world_size} = "
            f"tp {layout.tp} x pp {layout.pp} x cp {layout.cp} x dp {layout.dp} | engine {r.engine}/{r.mode} | "
            f"estimator {cfg.algo.estimator} | {cfg.trainer.total_steps} steps {start} | output {cfg.trainer.output_dir}")


def _write_config(out: Path, text: str) -> None:
    """`config.yaml` of this run; a different one of an earlier run is kept aside, never overwritten."""
    path = out / "config.yaml"
    if path.is_file():
        if path.read_text(errors="replace") == text:
            return
        aside = out / f"config.yaml.replaced-{time.time_ns()}"
        os.replace(path, aside)
        log.info("kept the earlier %s aside as %s", path, aside.name)
    tmp = out / ".config.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def train_main(config_path, overrides) -> int:
    from spro_mcore.trainer.run_lock import RunLock

    cfg = _prepare(config_path, overrides, training=True)
    out = Path(cfg.trainer.output_dir)
    lock = RunLock(out).acquire() if _is_main_process() else None
    try:
        return _train(cfg, out)
    finally:
        if lock is not None:
            lock.release()
        _destroy()


def _train(cfg, out: Path) -> int:
    from spro_mcore.trainer.checkpoint import Checkpointer
    from spro_mcore.trainer.loop import Trainer
    from spro_mcore.trainer.metrics import MetricsLogger
    from spro_mcore.trainer.setup import build_components

    layout = _start(cfg)
    checkpointer = Checkpointer(cfg, layout)
    parts = build_components(cfg, layout, checkpointer=checkpointer)
    if layout.is_main:
        log.info(_banner(cfg, layout, parts))
        _write_config(out, to_yaml(cfg))
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
    return 0


def eval_main(config_path, overrides) -> int:
    cfg = _prepare(config_path, overrides, training=False)
    try:
        from spro_mcore.trainer.loop import Trainer
        from spro_mcore.trainer.setup import build_components

        layout = _start(cfg)
        parts = build_components(cfg, layout, checkpointer=None)
        try:
            metrics = Trainer(cfg, layout, parts).evaluate()
        finally:
            if parts.engine is not None:
                parts.engine.close()
        if layout.is_main:
            print(json.dumps(metrics))
        return 0
    finally:
        _destroy()


def _destroy() -> None:
    """Leave no process group behind, also after a failure (in-process callers run again)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():  # else nothing to tear down (and no
        from spro_mcore.parallel import destroy  # megatron-core import just for that)

        destroy()
