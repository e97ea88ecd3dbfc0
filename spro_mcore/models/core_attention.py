"""Core attention for megatron-core's local layer spec on `torch.nn.functional.scaled_dot_product_attention`.

megatron-core 0.16's local `DotProductAttention` materialises [b*heads, s, s] scores with baddbmm, a
separate masked softmax and bmm, and refuses packed sequences (`packed_seq_params`, THD) outright: packing
on GPU goes through Transformer Engine. This module is a drop-in `core_attention` for the local spec that
runs everywhere (CPU included):

- padded batches (sbhd: query [s, b, heads, d], key/value [s, b, groups, d]): one SDPA call with the causal
  mask (and `attention_mask`, True = masked out, when given), GQA without materialising repeated keys;
- packed sequences (THD: [t, heads, d] with `packed_seq_params.cu_seqlens_q`): one causal SDPA call per
  segment, so no token attends across a sequence boundary (RoPE positions restart per segment in
  megatron's `apply_rotary_pos_emb` with the same cu_seqlens).

The output is [s, b, heads*d] (sbhd) or [t, heads*d] (THD), as megatron's attention expects. Softmax scale
as in DotProductAttention (1/sqrt(d) unless given; query-key layer scaling is folded in).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule


class SDPACoreAttention(MegatronModule):
    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection=None):
        super().__init__(config=config)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        # the features of DotProductAttention this module does not implement: refused, never ignored
        if dropout:
            raise NotImplementedError("SDPACoreAttention: attention dropout is not supported (set it to 0)")
        if config.context_parallel_size != 1:
            raise NotImplementedError("SDPACoreAttention: context parallelism needs Transformer Engine")
        if config.softmax_type != "vanilla" or config.window_size is not None:
            raise NotImplementedError("SDPACoreAttention: only vanilla softmax without sliding windows")
        self.attn_mask_type = attn_mask_type
        head_dim = config.kv_channels
        # apply_query_key_layer_scaling divides the scale by the layer number and multiplies it back inside
        # megatron's softmax (an fp16 overflow guard): the same softmax, so nothing to do here
        self.softmax_scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention: attention_bias is not supported")
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        if packed_seq_params is not None:
            return self._packed(query, key, value, packed_seq_params, causal)
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        mask = None
        if attention_mask is not None:
            mask = ~attention_mask.bool()
            if causal:
                s_q, s_k = q.shape[2], k.shape[2]
                mask = mask & torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril()
        out = _sdpa(q, k, v, mask=mask, causal=causal and mask is None, scale=self.softmax_scale)
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)

    def _packed(self, query, key, value, params, causal: bool):
        if params.qkv_format != "thd":
            raise NotImplementedError(f"SDPACoreAttention: packed format {params.qkv_format!r} (only thd)")
        cu_q = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        cu_k = params.cu_seqlens_kv_padded if params.cu_seqlens_kv_padded is not None else params.cu_seqlens_kv
        if not torch.equal(cu_q, cu_k):
            raise NotImplementedError("SDPACoreAttention: packed self-attention needs cu_seqlens_q == cu_seqlens_kv")
        bounds = cu_q.tolist()
        t = query.shape[0]
        if bounds[0] != 0 or bounds[-1] != t:
            raise ValueError(f"cu_seqlens {bounds[0]}..{bounds[-1]} do not cover the {t} packed tokens")
        # [t, n, d] -> [1, n, t, d], one causal call per segment
        q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (query, key, value))
        outs = [_sdpa(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], mask=None, causal=causal,
                      scale=self.softmax_scale)
                for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        return out.squeeze(0).transpose(0, 1).reshape(t, -1)


def _sdpa(q, k, v, *, mask, causal: bool, scale: float):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])
