"""The CPU layer's two speed patches (cpu_compat `_patch_linear_bias`, `_patch_rope_concat`): the same values
and gradients as an independent reference, and the work they remove is really gone (profiled ops)."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

pytestmark = pytest.mark.unit

needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is inert on CUDA machines")


def _ops(fn) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return [e.name for e in p.events()]


@needs_cpu_only
def test_linear_bias_inside_the_gemm_same_values_and_grads():
    import spro_mcore.parallel  # noqa: F401  (applies the layer)
    from megatron.core.tensor_parallel.layers import linear_with_grad_accumulation_and_async_allreduce as linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 16, generator=g, requires_grad=True)  # [s, b, h] as megatron's layers pass it
    w = torch.randn(24, 16, generator=g, requires_grad=True)
    b = torch.randn(24, generator=g, requires_grad=True)
    up = torch.randn(5, 3, 24, generator=g)

    def run(fn):
        for t in (x, w, b):
            t.grad = None
        out = fn()
        (out * up).sum().backward()
        return out.detach(), x.grad.clone(), w.grad.clone(), None if b.grad is None else b.grad.clone()

    got = run(lambda: linear(x, w, b, False, False, False))
    ref = run(lambda: torch.nn.functional.linear(x, w, b))
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        ops = _ops(lambda: linear(x, w, b, False, False, False))
    assert "aten::addmm" in ops and "aten::add" not in ops  # the bias rides in the GEMM
    no_bias = run(lambda: linear(x, w, None, False, False, False))  # megatron's own path, unchanged
    torch.testing.assert_close(no_bias[0], x.detach() @ w.detach().t(), rtol=1e-6, atol=1e-6)


@needs_cpu_only
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_without_the_concat_same_values(interleaved):
    import spro_mcore.parallel  # noqa: F401
    from megatron.core.models.common.embeddings import rope_utils

    g = torch.Generator().manual_seed(1)
    s, b, n, d = 6, 2, 3, 8
    t = torch.randn(s, b, n, d, generator=g)
    freqs = torch.randn(s, 1, 1, d, generator=g)

    def reference(t, freqs):  # RoPE as written in the paper / HF transformers, independent of megatron
        rot = freqs.shape[-1]
        x, rest = t[..., :rot], t[..., rot:]
        if interleaved:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
        else:
            x1, x2 = x.chunk(2, dim=-1)
            rotated = torch.cat((-x2, x1), dim=-1)
        return torch.cat((x * freqs.cos() + rotated * freqs.sin(), rest), dim=-1)

    got = rope_utils._apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=interleaved)
    torch.testing.assert_close(got, reference(t, freqs), rtol=1e-6, atol=1e-6)
    cats = [o for o in _ops(lambda: rope_utils._apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=interleaved))
            if o == "aten::cat"]
    assert len(cats) == 1  # rotate-half's own (stack is a cat); no second copy of the whole result
    half = freqs[..., : d // 2]  # partial rotary: the pass-through half still comes back (megatron's path)
    got = rope_utils._apply_rotary_pos_emb_bshd(t, half, rotary_interleaved=interleaved)
    torch.testing.assert_close(got, reference(t, half), rtol=1e-6, atol=1e-6)
