"""A megatron-core GPTModel (TransformerConfig + layer spec) from a Hugging Face config, for the current TP/PP.

Llama / Qwen2 / Qwen3 dense: RMSNorm, SwiGLU, RoPE (theta; linear and llama3 scaling), GQA, QKV bias,
QK-norm, tied or untied embeddings, vocabulary padded to a multiple of lcm(128, tp) (the same padded size
for every power-of-2 TP, so dist checkpoints reshard). The local spec (core attention on SDPA,
models/core_attention.py) runs everywhere (CPU included); the
Transformer Engine spec and the FP8 fields are used when Transformer Engine imports.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from spro_mcore.config.schema import ModelConfig
from spro_mcore.errors import UserError
from spro_mcore.models.fp8 import fp8_transformer_config_kwargs
from spro_mcore.models.gpt_model import SproGPTModel
from spro_mcore.models.hf_arch import HFArch, RopeSpec, parse_hf_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or an OSError/RuntimeError from a TE built for another CUDA
        return False
    return True


def resolve_transformer_impl(requested: str) -> str:
    """local | transformer_engine for the requested local | transformer_engine | auto."""
    if requested == "auto":
        return "transformer_engine" if te_available() else "local"
    if requested == "transformer_engine" and not te_available():
        raise UserError("model.transformer_impl=transformer_engine but transformer_engine does not import here; "
                        "install it (GPU only) or use local/auto")
    if requested not in ("local", "transformer_engine"):
        raise UserError(f"model.transformer_impl={requested!r} is not one of local, transformer_engine, auto")
    return requested


def transformer_config(arch: HFArch, model_cfg: ModelConfig, *, tp: int = 1, pp: int = 1, vpp: Optional[int] = None,
                       sequence_parallel: bool = False, transformer_impl: Optional[str] = None):
    """megatron-core TransformerConfig for `arch` under the given parallel sizes and ModelConfig."""
    from megatron.core.transformer import TransformerConfig

    if model_cfg.dtype not in DTYPES:
        raise UserError(f"model.dtype={model_cfg.dtype!r} is not one of {tuple(DTYPES)}")
    if arch.num_kv_heads % tp:
        raise UserError(f"tensor parallel size {tp} does not divide num_key_value_heads={arch.num_kv_heads}")
    if arch.num_layers % (pp * (vpp or 1)):
        raise UserError(f"num_hidden_layers={arch.num_layers} is not divisible by pp x vpp = {pp} x {vpp or 1}")
    impl = transformer_impl or resolve_transformer_impl(model_cfg.transformer_impl)
    dtype = DTYPES[model_cfg.dtype]
    recompute = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1) \
        if model_cfg.recompute_activations else {}
    return TransformerConfig(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_heads, num_query_groups=arch.num_kv_heads, kv_channels=arch.head_dim,
        normalization="RMSNorm", layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm, hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vpp,
        # interleaved schedule: Megatron-LM's default p2p mode. Batched p2p with vpp needs PP > 2 (with two
        # stages the activations and gradients to the same peer are matched out of order)
        overlap_p2p_comm=vpp is not None, batch_p2p_comm=vpp is None,
        sequence_parallel=sequence_parallel,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        # fused kernels that need CUDA/apex: off (TE brings its own where installed)
        bias_activation_fusion=False, masked_softmax_fusion=False, bias_dropout_fusion=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        transformer_impl=impl, **recompute,
        **fp8_transformer_config_kwargs(model_cfg.fp8, model_cfg.fp8_recipe, impl),
    )


def layer_spec(arch: HFArch, transformer_impl: str):
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if transformer_impl == "transformer_engine":
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.qk_norm)
    spec = specs.get_gpt_layer_local_spec(qk_layernorm=arch.qk_norm, normalization="RMSNorm")
    # SDPA instead of megatron's DotProductAttention: faster on CPU, and it runs packed (THD) sequences
    spec.submodules.self_attention.submodules.core_attention = local_core_attention()
    return spec


def local_core_attention():
    """The local spec's core attention (a function so that benchmarks can swap in megatron's own)."""
    from spro_mcore.models.core_attention import SDPACoreAttention

    return SDPACoreAttention


def llama3_inv_freq(rope: RopeSpec, head_dim: int) -> torch.Tensor:
    """RoPE inverse frequencies with Llama 3.x scaling, for any low/high-frequency factors and original
    context (megatron-core's own `rope_scaling` fixes them at 1 / 4 / 8192)."""
    inv = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
    high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def build_gpt_model(hf_config: str | Mapping[str, Any] | HFArch, model_cfg: Optional[ModelConfig] = None, *,
                    pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
                    vp_stage: Optional[int] = None, sequence_parallel: bool = False) -> SproGPTModel:
    """One GPTModel (one virtual-pipeline chunk when vp_stage is given) for this rank's place in the current
    TP/PP layout (megatron's parallel state must be initialised: `spro_mcore.parallel.initialize_model_parallel`).
    Weights are randomly initialised: load them with `models.load_hf.load_hf_weights` or a dist checkpoint."""
    from megatron.core import parallel_state as mpu

    arch = hf_config if isinstance(hf_config, HFArch) else parse_hf_config(hf_config)
    model_cfg = model_cfg or ModelConfig()
    _ensure_rng_tracker()
    tp = mpu.get_tensor_model_parallel_world_size()
    pp = mpu.get_pipeline_model_parallel_world_size()
    vpp = mpu.get_virtual_pipeline_model_parallel_world_size()
    impl = resolve_transformer_impl(model_cfg.transformer_impl)
    config = transformer_config(arch, model_cfg, tp=tp, pp=pp, vpp=vpp, sequence_parallel=sequence_parallel,
                                transformer_impl=impl)
    if pre_process is None:
        pre_process = mpu.is_pipeline_first_stage(ignore_virtual=vpp is None, vp_stage=vp_stage)
    if post_process is None:
        post_process = mpu.is_pipeline_last_stage(ignore_virtual=vpp is None, vp_stage=vp_stage)
    rope = arch.rope
    model = SproGPTModel(
        config=config, transformer_layer_spec=layer_spec(arch, impl), vocab_size=arch.padded_vocab_size(tp),
        max_sequence_length=arch.max_position_embeddings, pre_process=pre_process, post_process=post_process,
        parallel_output=True, share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope", rotary_base=rope.theta,
        rope_scaling=rope.kind == "llama3", rope_scaling_factor=rope.factor if rope.kind == "llama3" else 8.0,
        seq_len_interpolation_factor=rope.factor if rope.kind == "linear" else None, vp_stage=vp_stage,
    )
    # megatron's torch-norm fallback (local spec) makes its weights fp32 and on the CPU whatever params_dtype
    # and the device say. Megatron's own trainer casts the whole model (Float16Module); without that, the
    # distributed optimizer, which maps its states by position, mixes up fp32 and bf16 parameters of one
    # group in its checkpoint state, and a model outside DDP's buffers (a separate reference) has CPU norms.
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    for p in model.parameters():
        if p.dtype != config.params_dtype or p.device != device:
            p.data = p.data.to(device=device, dtype=config.params_dtype)
    if rope.kind == "llama3":  # the config's own low/high factors and original context
        model.rotary_pos_emb.inv_freq = llama3_inv_freq(rope, arch.head_dim).to(model.rotary_pos_emb.inv_freq.device)
    model.hf_arch = arch
    return model


def _ensure_rng_tracker(seed: int = 1234) -> None:
    """Megatron's attention forks the model-parallel RNG tracker even without dropout: seed it once if the
    caller has not (spro_mcore.parallel.seed_everything does), leaving torch's global RNG untouched."""
    from megatron.core import tensor_parallel

    if tensor_parallel.get_cuda_rng_tracker().get_states():
        return
    state = torch.get_rng_state()
    try:
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    finally:
        torch.set_rng_state(state)


def build_model_chunks(hf_config, model_cfg: Optional[ModelConfig] = None, *,
                       sequence_parallel: bool = False) -> list[SproGPTModel]:
    """This rank's model chunks: one per virtual pipeline stage (a list of one without VPP)."""
    from megatron.core import parallel_state as mpu

    vpp = mpu.get_virtual_pipeline_model_parallel_world_size()
    if vpp is None:
        return [build_gpt_model(hf_config, model_cfg, sequence_parallel=sequence_parallel)]
    return [build_gpt_model(hf_config, model_cfg, vp_stage=i, sequence_parallel=sequence_parallel) for i in range(vpp)]
