"""What a Hugging Face `config.json` says about a dense decoder, in the terms the Megatron model needs.

Supported families: Llama (LlamaForCausalLM), Qwen2 (Qwen2ForCausalLM: QKV bias) and Qwen3 (Qwen3ForCausalLM:
per-head RMSNorm on q and k). Both the transformers<5 layout (`rope_theta`, `rope_scaling`) and the 5.x layout
(`rope_parameters`) are read. Anything this module cannot represent exactly raises `UnsupportedModelError`
naming the field, so a checkpoint never loads into a silently different model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from spro_mcore.errors import UserError

# model_type -> (default QKV bias, QK-norm)
FAMILIES = {"llama": (False, False), "qwen2": (True, False), "qwen3": (False, True)}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
VOCAB_MULTIPLE = 128  # padded vocab is a multiple of lcm(128, tp): the same padded size for every power-of-2 TP


class UnsupportedModelError(UserError, ValueError):
    """The HF config describes a model this Megatron mapping cannot represent exactly."""


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    kind: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int = 8192  # llama3


@dataclass(frozen=True)
class HFArch:
    """A dense decoder-only model as described by its HF config (sizes are the unpadded, global ones)."""

    family: str
    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeSpec
    qkv_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    torch_dtype: Optional[str] = None
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def padded_vocab_size(self, tp: int = 1) -> int:
        multiple = _lcm(VOCAB_MULTIPLE, tp)
        return -(-self.vocab_size // multiple) * multiple


def _lcm(a: int, b: int) -> int:
    import math

    return a * b // math.gcd(a, b)


def load_hf_config(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict:
    """The config dict of an HF directory (its config.json), a config.json path, a dict, or an HF config object."""
    if hasattr(path_or_dict, "to_dict"):
        return path_or_dict.to_dict()
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict)
    path = os.fspath(path_or_dict)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise UnsupportedModelError(f"no HF config.json at {path!r}: pass an HF model directory")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UnsupportedModelError(f"{path} is not valid JSON ({e})") from None


def _rope(cfg: Mapping[str, Any]) -> RopeSpec:
    params = dict(cfg.get("rope_parameters") or {})  # transformers >= 5
    legacy = cfg.get("rope_scaling") or {}  # transformers < 5
    params = {**legacy, **params}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope type {kind!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    if kind == "default":
        return RopeSpec(theta=float(theta))
    if kind == "linear":
        return RopeSpec(theta=float(theta), kind="linear", factor=float(params["factor"]))
    return RopeSpec(
        theta=float(theta), kind="llama3", factor=float(params["factor"]),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def parse_hf_config(config: str | os.PathLike | Mapping[str, Any]) -> HFArch:
    """Read an HF config (directory, file, dict or config object) into an `HFArch`, or raise
    `UnsupportedModelError` naming what is not supported."""
    cfg = load_hf_config(config)
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        archs = cfg.get("architectures") or [model_type]
        raise UnsupportedModelError(
            f"unsupported architecture {archs[0]!r} (model_type={model_type!r}); supported model types: "
            f"{', '.join(sorted(FAMILIES))} (Llama, Qwen2, Qwen3 dense)")
    default_bias, qk_norm = FAMILIES[model_type]
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"hidden_act={act!r} is not supported (only silu / SwiGLU)")
    if cfg.get("mlp_bias"):
        raise UnsupportedModelError("mlp_bias=true is not supported (Megatron's SwiGLU MLP here has no bias)")
    qkv_bias = default_bias
    if model_type == "llama" and cfg.get("attention_bias"):
        raise UnsupportedModelError("attention_bias=true is not supported for Llama (it adds an o_proj bias)")
    if model_type == "qwen3" and cfg.get("attention_bias"):
        raise UnsupportedModelError("attention_bias=true is not supported for Qwen3")
    if cfg.get("use_sliding_window"):
        raise UnsupportedModelError("use_sliding_window=true is not supported (full attention only)")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise UnsupportedModelError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    return HFArch(
        family=model_type, vocab_size=int(cfg["vocab_size"]), hidden_size=hidden,
        ffn_hidden_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)), rope=_rope(cfg),
        qkv_bias=qkv_bias, qk_norm=qk_norm, tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        torch_dtype=cfg.get("dtype") or cfg.get("torch_dtype"), config=cfg,
    )
