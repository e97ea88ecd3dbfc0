"""The one HF <-> Megatron weight mapping: names, packing and tensor-parallel sharding.

Every Megatron parameter of a (TP/PP/VPP-sharded) GPTModel chunk maps to one or more HF tensors with a
*kind* that says how they are packed and sharded:

- `replicated`: norms (RMSNorm weights, QK-norm), identical on every TP rank.
- `vocab`: embedding / output layer, rows padded with zeros to the padded vocab, then split in TP row chunks.
- `row`: row-parallel linears (o_proj, down_proj), split along the input dim.
- `qkv`: q, k, v packed per query group -- [g0: q heads, k, v | g1: ...] -- then split in TP row chunks (whole
  groups per rank). The same for the QKV bias (Qwen2).
- `glu`: gate and up packed in linear_fc1 as [gate shard; up shard] PER TP RANK (megatron's SwiGLU chunks the
  local fc1 output in two).

Layer indices are global: megatron's `TransformerLayer.layer_number` (1-based) already includes the offset of
this pipeline stage and virtual chunk. Both the local spec and the Transformer Engine spec (norms fused
into linear_qkv / linear_fc1 as `layer_norm_weight`) are named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from spro_mcore.models.hf_arch import HFArch

KINDS = ("replicated", "vocab", "row", "qkv", "glu")

# megatron name inside decoder.layers.<i>.  ->  (HF names inside model.layers.<g>., kind)
_LAYER_RULES = {
    "input_layernorm.weight": (("input_layernorm.weight",), "replicated"),
    "self_attention.linear_qkv.layer_norm_weight": (("input_layernorm.weight",), "replicated"),  # TE spec
    "self_attention.linear_qkv.weight": (("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                          "self_attn.v_proj.weight"), "qkv"),
    "self_attention.linear_qkv.bias": (("self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                        "self_attn.v_proj.bias"), "qkv"),
    "self_attention.q_layernorm.weight": (("self_attn.q_norm.weight",), "replicated"),
    "self_attention.k_layernorm.weight": (("self_attn.k_norm.weight",), "replicated"),
    "self_attention.linear_proj.weight": (("self_attn.o_proj.weight",), "row"),
    "pre_mlp_layernorm.weight": (("post_attention_layernorm.weight",), "replicated"),
    "mlp.linear_fc1.layer_norm_weight": (("post_attention_layernorm.weight",), "replicated"),  # TE spec
    "mlp.linear_fc1.weight": (("mlp.gate_proj.weight", "mlp.up_proj.weight"), "glu"),
    "mlp.linear_fc2.weight": (("mlp.down_proj.weight",), "row"),
}


class WeightMappingError(ValueError):
    pass


@dataclass(frozen=True)
class ParamRule:
    """One Megatron parameter of this rank and the HF tensors it holds (a TP shard of)."""

    mcore_name: str  # name inside the GPTModel chunk
    param: torch.nn.Parameter
    hf_names: tuple[str, ...]
    kind: str
    export: bool = True  # False for the last stage's copy of a tied embedding (exported from the first stage)


def param_rules(model) -> list[ParamRule]:
    """The rules for every parameter of one (unwrapped) GPTModel chunk; unknown parameters raise."""
    tied = model.share_embeddings_and_output_weights
    layer_index = {i: layer.layer_number - 1 for i, layer in enumerate(model.decoder.layers)}
    rules = []
    for name, p in model.named_parameters():
        if name == "embedding.word_embeddings.weight":
            rules.append(ParamRule(name, p, ("model.embed_tokens.weight",), "vocab"))
        elif name == "output_layer.weight":
            hf = "model.embed_tokens.weight" if tied else "lm_head.weight"
            rules.append(ParamRule(name, p, (hf,), "vocab", export=not tied))
        elif name == "decoder.final_layernorm.weight":
            rules.append(ParamRule(name, p, ("model.norm.weight",), "replicated"))
        elif name.startswith("decoder.layers."):
            idx, rest = name[len("decoder.layers."):].split(".", 1)
            if rest not in _LAYER_RULES:
                raise WeightMappingError(f"no HF mapping for Megatron parameter {name!r}")
            hf, kind = _LAYER_RULES[rest]
            prefix = f"model.layers.{layer_index[int(idx)]}."
            rules.append(ParamRule(name, p, tuple(prefix + n for n in hf), kind))
        else:
            raise WeightMappingError(f"no HF mapping for Megatron parameter {name!r}")
    return rules


def hf_tensor_shapes(arch: HFArch) -> dict[str, tuple[int, ...]]:
    """Every HF tensor of the model in canonical order (embedding, layers, norm, lm_head) with its shape."""
    h, d, f = arch.hidden_size, arch.head_dim, arch.ffn_hidden_size
    q, kv = arch.num_heads * d, arch.num_kv_heads * d
    out = {"model.embed_tokens.weight": (arch.vocab_size, h)}
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "self_attn.q_proj.weight"] = (q, h)
        out[p + "self_attn.k_proj.weight"] = (kv, h)
        out[p + "self_attn.v_proj.weight"] = (kv, h)
        if arch.qkv_bias:
            out[p + "self_attn.q_proj.bias"] = (q,)
            out[p + "self_attn.k_proj.bias"] = (kv,)
            out[p + "self_attn.v_proj.bias"] = (kv,)
        if arch.qk_norm:
            out[p + "self_attn.q_norm.weight"] = (d,)
            out[p + "self_attn.k_norm.weight"] = (d,)
        out[p + "self_attn.o_proj.weight"] = (h, q)
        out[p + "post_attention_layernorm.weight"] = (h,)
        out[p + "mlp.gate_proj.weight"] = (f, h)
        out[p + "mlp.up_proj.weight"] = (f, h)
        out[p + "mlp.down_proj.weight"] = (h, f)
    out["model.norm.weight"] = (h,)
    if not arch.tie_word_embeddings:
        out["lm_head.weight"] = (arch.vocab_size, h)
    return out


# --- packing and sharding: pure tensor functions -------------------------------------------------------------

def _pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: HFArch) -> torch.Tensor:
    g, d = arch.num_kv_heads, arch.head_dim
    rest = q.shape[1:]
    q = q.reshape(g, arch.num_heads // g, d, *rest)
    k, v = k.reshape(g, 1, d, *rest), v.reshape(g, 1, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _unpack_qkv(packed: torch.Tensor, arch: HFArch) -> list[torch.Tensor]:
    g, d = arch.num_kv_heads, arch.head_dim
    per = arch.num_heads // g
    rest = packed.shape[1:]
    x = packed.reshape(g, per + 2, d, *rest)
    q, k, v = x.split([per, 1, 1], dim=1)
    return [t.reshape(-1, *rest).contiguous() for t in (q, k, v)]


def hf_to_shard(kind: str, tensors: list[torch.Tensor], arch: HFArch, tp: int, rank: int,
                padded_vocab: int | None = None) -> torch.Tensor:
    """This TP rank's Megatron shard from the full HF tensor(s)."""
    if kind == "replicated":
        return tensors[0]
    if kind == "vocab":
        (t,) = tensors
        padded = padded_vocab or arch.padded_vocab_size(tp)
        if padded > t.shape[0]:
            t = torch.cat([t, t.new_zeros(padded - t.shape[0], *t.shape[1:])])
        return t.chunk(tp, dim=0)[rank]
    if kind == "row":
        return tensors[0].chunk(tp, dim=1)[rank]
    if kind == "qkv":
        return _pack_qkv(*tensors, arch).chunk(tp, dim=0)[rank]
    if kind == "glu":
        gate, up = tensors
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
    raise WeightMappingError(f"unknown kind {kind!r}")


def shards_to_hf(kind: str, shards: list[torch.Tensor], arch: HFArch) -> list[torch.Tensor]:
    """The full HF tensor(s) from all TP ranks' shards (in TP rank order); inverse of `hf_to_shard`.

    With one shard (TP=1) the results are views of it wherever the layout allows (all but q/k/v, which are
    interleaved per query group): the weight sync then copies each byte once, into the engine. A caller that
    keeps a result past the next update of the shard must copy it."""
    one = len(shards) == 1
    if kind == "replicated":
        return [shards[0]]
    if kind == "vocab":
        return [(shards[0] if one else torch.cat(shards))[: arch.vocab_size]]
    if kind == "row":
        return [shards[0] if one else torch.cat(shards, dim=1)]
    if kind == "qkv":
        return _unpack_qkv(shards[0] if one else torch.cat(shards), arch)
    if kind == "glu":
        halves = [s.chunk(2, dim=0) for s in shards]
        if one:
            return list(halves[0])
        return [torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])]
    raise WeightMappingError(f"unknown kind {kind!r}")


def iter_rules(models) -> Iterator[ParamRule]:
    from spro_mcore.models.unwrap import as_list, unwrap

    for m in as_list(models):
        yield from param_rules(unwrap(m))
