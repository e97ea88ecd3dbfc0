"""SDPACoreAttention (models/core_attention.py) against a naive softmax(QK^T)V reference: padded batches with
the causal mask (and a padding mask), GQA, and packed THD segments, which must equal each sequence alone."""

import math

import pytest
import torch

pytestmark = pytest.mark.unit


def _module(heads=4, groups=2, head_dim=8):
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from spro_mcore.models.core_attention import SDPACoreAttention

    cfg = TransformerConfig(num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
                            num_query_groups=groups, kv_channels=head_dim, attention_dropout=0.0,
                            hidden_dropout=0.0, use_cpu_initialization=True)
    return SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")


def _naive(q, k, v, keep):
    """q [s, n, d], k/v [s, g, d], keep [s, s] bool -> [s, n*d]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = torch.einsum("snd,tnd->nst", q, k) / math.sqrt(q.shape[-1])
    p = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    return torch.einsum("nst,tnd->snd", p, v).reshape(q.shape[0], -1)


def _qkv(s, b, g=torch.Generator().manual_seed(0)):
    return torch.randn(s, b, 4, 8, generator=g), torch.randn(s, b, 2, 8, generator=g), torch.randn(s, b, 2, 8, generator=g)


def test_padded_causal_and_padding_mask():
    attn = _module()
    q, k, v = _qkv(6, 2)
    out = attn(q, k, v, None)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    for b in range(2):
        torch.testing.assert_close(out[:, b], _naive(q[:, b], k[:, b], v[:, b], causal), atol=1e-6, rtol=0)
    masked = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    masked[1, :, :, 4:] = True  # row 1: the last two keys are padding
    out = attn(q, k, v, masked)
    torch.testing.assert_close(out[:, 1], _naive(q[:, 1], k[:, 1], v[:, 1], causal & ~masked[1, 0]), atol=1e-6, rtol=0)


def test_packed_segments_equal_each_sequence_alone():
    from megatron.core.packed_seq_params import PackedSeqParams

    attn = _module()
    lens = [1, 5, 3]
    q, k, v = (x[:, 0] for x in _qkv(sum(lens), 1))
    cu = torch.tensor([0, 1, 6, 9], dtype=torch.int32)
    out = attn(q, k, v, None, packed_seq_params=PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=5, max_seqlen_kv=5))
    assert out.shape == (9, 32)
    for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
        keep = torch.ones(hi - lo, hi - lo, dtype=torch.bool).tril()
        torch.testing.assert_close(out[lo:hi], _naive(q[lo:hi], k[lo:hi], v[lo:hi], keep), atol=1e-6, rtol=0)
    # the reference can fail: one causal pass over the whole pack differs (attention crosses segments)
    whole = _naive(q, k, v, torch.ones(9, 9, dtype=torch.bool).tril())
    assert (whole[1:] - out[1:]).abs().max() > 1e-3


def test_refuses_dropout():
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from spro_mcore.models.core_attention import SDPACoreAttention

    cfg = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, attention_dropout=0.1,
                            use_cpu_initialization=True)
    with pytest.raises(NotImplementedError, match="dropout"):
        SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")
