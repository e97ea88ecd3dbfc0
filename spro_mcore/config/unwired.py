"""Options the schema accepts but the code does not (yet) run: refused at start-up, one line each.

A knob that is accepted and then silently ignored (or that crashes mid-run, or trains something other than
what it says) is worse than an error. Each check below names the option and what to use instead; when the
code learns to run a combination, its refusal goes and a test that exercises it comes in.
"""

from __future__ import annotations

from spro_mcore.config.schema import Config, ModelConfig, TrainerConfig


def _te_importable() -> bool:
    from spro_mcore.models.build import te_available

    return te_available()


def _uses_te(model: ModelConfig) -> bool:
    """Whether the model is built with Transformer Engine (auto: when it imports here)."""
    if model.transformer_impl == "local":
        return False
    return model.transformer_impl == "transformer_engine" or _te_importable()


def unwired_reasons(cfg: Config) -> list[str]:
    """One line per option (or combination) `cfg` sets that the code does not run."""
    p, m, r, d = cfg.parallel, cfg.model, cfg.rollout, cfg.data
    out: list[str] = []
    if p.cp > 1:
        # megatron's CP groups would be built, but no sequence is split and gradients would be reduced over CP
        out.append(f"parallel.cp={p.cp}: context parallelism is not implemented (sequences are not split across "
                   f"ranks); use parallel.cp=1 and parallel.tp/pp for long sequences")
    if p.ep > 1:
        out.append(f"parallel.ep={p.ep}: expert parallelism needs a mixture-of-experts model and only dense "
                   f"Llama/Qwen2/Qwen3 models are supported; use parallel.ep=1")
    if p.sequence_parallel and not _uses_te(m):
        out.append("parallel.sequence_parallel=true needs Transformer Engine (megatron's local layer spec has no "
                   "sequence-parallel norms): set model.transformer_impl=transformer_engine on a GPU machine, or "
                   "parallel.sequence_parallel=false")
    if p.vpp is not None:
        if p.vpp < 2:
            out.append(f"parallel.vpp={p.vpp}: virtual pipeline stages must be >= 2; use parallel.vpp=null for "
                       f"the plain 1F1B schedule")
        elif p.pp < 2:
            out.append(f"parallel.vpp={p.vpp} needs pipeline parallelism: set parallel.pp >= 2, or parallel.vpp=null")
        if cfg.trainer.packing:
            out.append("trainer.packing with parallel.vpp: the interleaved schedule needs a micro-batch count that is "
                       "a multiple of parallel.pp, which token-balanced packs do not keep; set trainer.packing=false")
    if m.fp8 is not None and m.transformer_impl == "auto" and not _te_importable():
        out.append(f"model.fp8={m.fp8} needs Transformer Engine, which does not import here; set model.fp8=null "
                   f"or run where transformer_engine is installed")
    if m.fp8 is None:
        defaults = ModelConfig()
        for key in ("fp8_recipe", "fp8_scope"):
            if getattr(m, key) != getattr(defaults, key):
                out.append(f"model.{key}={getattr(m, key)} has no effect without model.fp8: set model.fp8 "
                           f"(e4m3 | hybrid) or drop model.{key}")
    if cfg.trainer.async_mode != "bounded" and cfg.trainer.max_staleness != TrainerConfig().max_staleness:
        out.append(f"trainer.max_staleness={cfg.trainer.max_staleness} has no effect without "
                   f"trainer.async_mode=bounded: set trainer.async_mode=bounded or drop trainer.max_staleness")
    if cfg.trainer.async_mode != "off":
        if r.sleep_when_idle:
            out.append(f"trainer.async_mode={cfg.trainer.async_mode} with rollout.sleep_when_idle: the engine sleeps "
                       f"during the update, when the next rollout would be generating; set rollout.sleep_when_idle=false")
        elif r.engine != "hf" and r.mode == "colocated":
            out.append(f"trainer.async_mode={cfg.trainer.async_mode} with a colocated {r.engine} engine: its generation "
                       f"shares this process and its collectives; use rollout.mode=server (or rollout.engine=hf)")
        if cfg.algo.estimator == "pav":
            out.append(f"trainer.async_mode={cfg.trainer.async_mode} with algo.estimator=pav: the process reward's "
                       f"prover and verifier are not yet aligned with stale rollouts; use trainer.async_mode=off")
    if m.dtype == "float16":
        # megatron's fp16 optimizer unscales by a dynamic loss scale the update never applies (no
        # grad_scale_func): updates would be ~2^-32 too small
        out.append("model.dtype=float16 is not supported for training (no loss scaling is applied); use "
                   "model.dtype=bfloat16 (or float32)")
    if r.engine_tp > 1 and r.engine == "hf":
        out.append(f"rollout.engine_tp={r.engine_tp}: the hf engine runs on one device; use rollout.engine=vllm "
                   f"for a tensor-parallel engine, or rollout.engine_tp=1")
    if r.engine_tp > 1 and r.engine == "vllm" and r.mode == "server":
        out.append(f"rollout.engine_tp={r.engine_tp} is not used in server mode: a vLLM server's TP is set where it "
                   f"is launched (SPRO_VLLM_TP=... launch/vllm_server.sh); set rollout.engine_tp=1")
    if r.server_urls and r.mode != "server":
        out.append("rollout.server_urls is only used with rollout.mode=server; drop it or set rollout.mode=server")
    if d.source == "synthetic":
        for key in ("train_path", "eval_path"):
            if getattr(d, key):
                out.append(f"data.{key} is set but data.source=synthetic ignores it: set data.source=file")
    return out


def refuse_unwired(cfg: Config) -> None:
    """Raise ConfigError with the first unwired option of `cfg` (one line naming it and the alternative)."""
    from spro_mcore.config.load import ConfigError

    reasons = unwired_reasons(cfg)
    if reasons:
        raise ConfigError(reasons[0])
