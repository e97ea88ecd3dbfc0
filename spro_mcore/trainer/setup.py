"""Build what the loop needs from the config: tokenizer, policy (with its reference), rollout engine (on the ranks
that own one), prompt iterator, held-out prompts and the reward scorer; then resume if a checkpoint says so."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from spro_mcore.config.schema import Config
from spro_mcore.errors import UserError
from spro_mcore.models.model_path import ASSETS, resolve_model_path  # noqa: F401 - also imported from here
from spro_mcore.parallel.distributed import Layout

log = logging.getLogger(__name__)

@dataclass
class Components:
    policy: Any  # trainer.policy.Policy (the megatron-core implementation)
    engine: Any  # rollout.engine.Engine where this rank hosts one (owns_engine, engine_on_every_rank), else None
    tokenizer: Any
    pad_id: int
    prompts: Any  # trainer.prompts.PromptSource: next_batch(layout), state_dict(), load_state_dict()
    eval_prompts: list
    scorer: Any  # trainer.group_scorer.GroupScorer
    model_path: str
    process_reward: Any = None  # trainer.process_reward: (batch, prompts, step) -> (estimator inputs, cost metrics)
    start_step: int = 0


def owns_engine(layout: Layout) -> bool:
    """The first rank of each model-parallel (TP x PP) group generates for its data-parallel replica."""
    return layout.tp_rank == 0 and layout.pp_rank == 0


def engine_on_every_rank(cfg: Config, layout: Layout) -> bool:
    """Colocated vLLM in a multi-rank job: every rank hosts (a TP rank of) an engine, vLLM's external-launcher
    layout; the engines of a model-parallel group share its prompts (`rollout/engine_group.py`)."""
    return cfg.rollout.engine == "vllm" and cfg.rollout.mode == "colocated" and layout.world_size > 1


def build_components(cfg: Config, layout: Layout, *, checkpointer=None) -> Components:
    from transformers import AutoTokenizer

    from spro_mcore.models.mcore_checkpoint import is_mcore_checkpoint
    from spro_mcore.rollout.engine import EngineSpec, build_engine
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy
    from spro_mcore.trainer.group_scorer import GroupScorer
    from spro_mcore.trainer.process_reward import build_process_reward
    from spro_mcore.trainer.prompts import build_prompt_sources

    model_path = resolve_model_path(cfg.model.path)
    reference_path = resolve_model_path(cfg.model.reference_path, "model.reference_path") if cfg.model.reference_path else model_path
    hf_dir = _hf_dir_of(model_path)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts, eval_prompts = build_prompt_sources(cfg, tokenizer, layout)
    updates = cfg.trainer.total_steps * cfg.trainer.mini_batches * cfg.trainer.ppo_epochs
    policy = MegatronPolicy(cfg, layout, model_path, reference_path, total_updates=updates)
    engine = None
    every_rank = engine_on_every_rank(cfg, layout)
    if every_rank or owns_engine(layout):
        if is_mcore_checkpoint(model_path):
            raise UserError(f"model.path={model_path} is a Megatron checkpoint: the rollout engine needs an HF "
                            f"directory (convert it with `spro-mcore convert mcore-to-hf`)")
        # the longest sequence a step can make, within what the model's positions allow
        max_len = min(policy.arch.max_position_embeddings, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens)
        engine = build_engine(EngineSpec.from_rollout_config(cfg.rollout, hf_dir, seed=cfg.trainer.seed,
                                                             max_model_len=max_len))
        if every_rank:
            from spro_mcore.parallel import collectives
            from spro_mcore.rollout.engine_group import EngineGroup

            engine = EngineGroup(engine, collectives.process_group("mp"), cfg.rollout.engine_tp)
    scorer = GroupScorer(cfg.data.reward_fn, timeout_s=cfg.data.reward_timeout_s)
    def initial_engine():  # PAV's frozen prover: an embedded hf engine on the initial weights, never synced
        rollout = dataclasses.replace(cfg.rollout, engine="hf", mode="colocated", server_urls=[], engine_tp=1,
                                      weight_sync="auto", weight_sync_delta=False)
        return build_engine(EngineSpec.from_rollout_config(rollout, hf_dir, seed=cfg.trainer.seed + 1,
                                                           max_model_len=policy.arch.max_position_embeddings))

    process_reward = build_process_reward(cfg, layout, tokenizer=tokenizer, engine=engine, scorer=scorer,
                                          initial_engine=initial_engine)
    parts = Components(policy=policy, engine=engine, tokenizer=tokenizer, pad_id=pad_id, prompts=prompts,
                       eval_prompts=eval_prompts, scorer=scorer, model_path=model_path, process_reward=process_reward)
    if checkpointer is not None:
        parts.start_step = checkpointer.restore(parts)
    return parts


def _hf_dir_of(model_path: str) -> str:
    """Tokenizer and engine start from the HF directory (a Megatron checkpoint records its template)."""
    from spro_mcore.models.mcore_checkpoint import is_mcore_checkpoint, read_metadata

    if is_mcore_checkpoint(model_path):
        template = read_metadata(model_path).get("hf_template")
        if template and Path(template).is_dir():
            return template
        raise UserError(f"{model_path}: a Megatron checkpoint without an HF template directory for the tokenizer")
    return model_path
