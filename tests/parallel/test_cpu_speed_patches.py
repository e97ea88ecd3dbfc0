"""The CPU layer's speed patches (cpu_compat `_patch_linear_bias`, `_patch_rope_concat` with `_RopeHalves`,
`_patch_swiglu`, `_patch_rmsnorm`): the same values and gradients as an independent reference and as megatron-core's own
functions (`without_speed_patches`), and the work they remove is really gone (profiled ops). A whole
Megatron model gives the same log-probs and gradients with and without them."""

from types import SimpleNamespace

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

pytestmark = pytest.mark.unit

needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is inert on CUDA machines")


def _ops(fn) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return [e.name for e in p.events()]


def _big_ops(fn, numel: int) -> list[str]:
    """The ops with an input of at least `numel` elements (the activations, not cos/sin), and every cat (the
    profiler records no shapes for tensor lists)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        fn()
    return [e.name for e in p.events()
            if e.name == "aten::cat" or any(isinstance(sh, list) and sh and torch.Size(sh).numel() >= numel for sh in e.input_shapes)]


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


@needs_cpu_only
def test_rope_halves_bitwise_equal_to_megatron_values_and_grads():
    """Megatron's frequencies (duplicated halves): the rotation without neg/cat rounds every value as
    megatron's `x*cos + rotate_half(x)*sin` does, forward and backward, also on a strided view (key)."""
    from spro_mcore.parallel.cpu_compat import without_speed_patches
    from megatron.core.models.common.embeddings import rope_utils

    g = torch.Generator().manual_seed(2)
    s, b, n, d = 7, 2, 3, 8
    mixed = torch.randn(s, b, n, 3 * d, generator=g)
    f = torch.randn(s, 1, 1, d // 2, generator=g) * 5
    freqs = torch.cat((f, f), dim=-1)  # as RotaryEmbedding.get_emb builds it
    up = torch.randn(s, b, n, d, generator=g)

    def run():
        x = mixed.clone().requires_grad_(True)
        out = rope_utils._apply_rotary_pos_emb_bshd(x[..., d:2 * d], freqs, mscale=1.5)  # a strided view
        (out * up).sum().backward()
        return out.detach(), x.grad

    def ops():
        x = mixed.clone().requires_grad_(True)
        return _big_ops(lambda: (rope_utils._apply_rotary_pos_emb_bshd(x[..., d:2 * d], freqs) * up).sum().backward(),
                        up.numel() // 2)

    got, got_ops = run(), ops()
    with without_speed_patches():
        ref, ref_ops = run(), ops()
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    with torch.no_grad():  # the log-prob passes' path (no autograd node)
        no_grad = rope_utils._apply_rotary_pos_emb_bshd(mixed[..., d:2 * d], freqs, mscale=1.5)
    assert torch.equal(no_grad, ref[0])
    x = mixed[..., d:2 * d]
    indep = x * (freqs.cos() * 1.5) + torch.cat((-x[..., d // 2:], x[..., :d // 2]), -1) * (freqs.sin() * 1.5)
    torch.testing.assert_close(got[0], indep, rtol=1e-6, atol=1e-6)
    assert "aten::cat" in ref_ops and "aten::neg" in ref_ops  # megatron's rotate-half (and its backward)
    assert "aten::cat" not in got_ops and "aten::neg" not in got_ops


@needs_cpu_only
@pytest.mark.parametrize("exact", [False, True])
def test_rope_thd_bitwise_equal_and_tables_made_once_a_forward(exact):
    """Packed (THD) RoPE: megatron's per-sequence frequency slices (`exact`: freqs spans the whole pack, else
    the longest sequence) give the same values bit for bit through the memoised tables; cos/sin are computed
    once for the q and k of every layer of one forward, again for a new or modified freqs tensor."""
    from megatron.core.models.common.embeddings import rope_utils

    from spro_mcore.parallel.cpu_compat import without_speed_patches

    g = torch.Generator().manual_seed(6)
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    n, d = 3, 8
    f = torch.randn(9 if exact else 5, d // 2, generator=g) * 4
    freqs = torch.cat((f, f), dim=-1)[:, None, None, :]  # [positions, 1, 1, d], as RotaryEmbedding makes it
    cp = SimpleNamespace(size=lambda: 1, rank=lambda: 0)
    qs = [torch.randn(9, n, d, generator=g) for _ in range(4)]

    def run(freqs):
        return [rope_utils._apply_rotary_pos_emb_thd(q, cu, freqs, cp_group=cp) for q in qs]

    got = run(freqs)
    with without_speed_patches():
        ref = run(freqs)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    lens = [3, 1, 5]
    starts = [0, 3, 4]
    for q, out in zip(qs, got):  # independent: each sequence rotated by its own positions' frequencies
        for s, m in zip(starts, lens):
            fr = freqs[s:s + m] if exact else freqs[:m]
            x = q[s:s + m]
            expect = x * fr[:, 0].cos() + torch.cat((-x[..., d // 2:], x[..., :d // 2]), -1) * fr[:, 0].sin()
            torch.testing.assert_close(out[s:s + m], expect, rtol=1e-6, atol=1e-6)
    assert _ops(lambda: run(freqs)).count("aten::cos") == 0  # the tables of this freqs are made already
    other = freqs.clone()
    assert _ops(lambda: run(other)).count("aten::cos") == 1  # a new tensor: once for all four calls
    other.mul_(0.5)  # modified in place: made again, with the new values
    assert _ops(lambda: run(other)).count("aten::cos") == 1
    halved = run(other)
    with without_speed_patches():
        assert all(torch.equal(a, b) for a, b in zip(halved, run(other)))


@needs_cpu_only
def test_swiglu_mlp_bitwise_equal_to_megatron_and_no_offset_pass():
    """megatron's unfused MLP with silu(a) * (b + 0.0): the patched MLP gives the same output and input
    gradient bit for bit, without the add and without the backward's cat of the halves' gradients."""
    from spro_mcore.parallel.cpu_compat import _SwiGLU, without_speed_patches
    from megatron.core.transformer import mlp

    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 2, 2 * 12, generator=g)
    up = torch.randn(5, 2, 12, generator=g)

    class Linear:  # the MLP's linear layers as identities: the activation alone is under test
        def __call__(self, x):
            return x, None

    config = SimpleNamespace(use_te_activation_func=False, bias_activation_fusion=False, gated_linear_unit=True,
                             activation_func=torch.nn.functional.silu, activation_func_clamp_value=None,
                             glu_linear_offset=0.0)
    module = SimpleNamespace(config=config, linear_fc1=Linear(), linear_fc2=Linear())

    def run():
        x = x0.clone().requires_grad_(True)
        out, _ = mlp.MLP.forward(module, x)
        (out * up).sum().backward()
        return out.detach(), x.grad

    def ops():
        x = x0.clone().requires_grad_(True)
        return _ops(lambda: (mlp.MLP.forward(module, x)[0] * up).sum().backward())

    got, got_ops = run(), ops()
    with without_speed_patches():
        ref, ref_ops = run(), ops()
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    with torch.no_grad():  # the log-prob passes' path (the product in place)
        assert torch.equal(mlp.MLP.forward(module, x0)[0], ref[0])
    a, b = x0.double().chunk(2, -1)
    torch.testing.assert_close(got[0].double(), torch.nn.functional.silu(a) * b, rtol=1e-6, atol=1e-6)
    assert ref_ops.count("aten::add") >= 1 and "aten::cat" in ref_ops  # megatron's offset add, chunk backward
    assert "aten::add" not in got_ops and "aten::cat" not in got_ops
    config.glu_linear_offset = 1.0  # a configuration the patch does not cover goes to megatron's forward
    out, _ = mlp.MLP.forward(module, x0)
    torch.testing.assert_close(out, torch.nn.functional.silu(x0[..., :12]) * (x0[..., 12:] + 1.0))
    assert _SwiGLU.apply(x0).shape == (5, 2, 12)


@needs_cpu_only
def test_rmsnorm_forward_bitwise_equal_closed_form_backward():
    """megatron's torch-norm RMSNorm: the patched module's forward equals torch's composite bit for bit (with
    and without grad), its closed-form backward equals autograd's and a float64 reference, without autograd's
    walk back through pow and rsqrt; a bf16 input goes to torch's own forward."""
    import spro_mcore.parallel  # noqa: F401
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from spro_mcore.parallel.cpu_compat import _CpuRMSNorm, without_speed_patches

    config = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, normalization="RMSNorm")
    norm = WrappedTorchNorm(config, 16, eps=1e-6)
    assert type(norm) is _CpuRMSNorm and isinstance(norm, torch.nn.RMSNorm)
    assert list(norm.state_dict()) == ["weight"]
    g = torch.Generator().manual_seed(5)
    norm.weight.data = torch.randn(16, generator=g)
    x0 = torch.randn(5, 3, 16, generator=g) * 3
    up = torch.randn(5, 3, 16, generator=g)

    def run():
        x = x0.clone().requires_grad_(True)
        norm.weight.grad = None
        out = norm(x)
        (out * up).sum().backward()
        return out.detach(), x.grad, norm.weight.grad.clone()

    def ops():
        x = x0.clone().requires_grad_(True)
        return _ops(lambda: (norm(x) * up).sum().backward())

    got, got_ops = run(), ops()
    with without_speed_patches():
        ref, ref_ops = run(), ops()
        with torch.no_grad():
            ref_no_grad = norm(x0)
    assert torch.equal(got[0], ref[0])
    with torch.no_grad():
        assert torch.equal(norm(x0), ref_no_grad)
    for a, b in zip(got[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    x, w = x0.double().requires_grad_(True), norm.weight.detach().double().requires_grad_(True)
    (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w * up.double()).sum().backward()
    torch.testing.assert_close(got[1].double(), x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2].double(), w.grad, rtol=1e-5, atol=1e-6)
    assert ref_ops.count("aten::pow") >= 2 and got_ops.count("aten::pow") == 1  # pow's backward is gone
    with torch.no_grad():
        low = x0.bfloat16()
        torch.testing.assert_close(norm(low), torch.nn.functional.rms_norm(low, (16,), norm.weight, 1e-6))


def _model_grads(hf_dir):
    """Log-probs and every parameter's gradient of one forward+backward of a real Megatron model, padded and
    packed (THD), with and without the speed patches."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from spro_mcore.models import load_model, make_forward_step
    from spro_mcore.models.logprobs import build_packs
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.parallel.cpu_compat import without_speed_patches

    initialize_model_parallel(1, 1)
    chunks, arch = load_model(hf_dir)
    ids = torch.randint(0, arch.vocab_size, (3, 20), generator=torch.Generator().manual_seed(4))
    p, r = torch.tensor([3, 5, 1]), torch.tensor([17, 9, 19])
    padded = [dict(input_ids=ids, prompt_lens=p, response_lens=r)]
    packed, pack_len = build_packs(chunks, ids, p, r, [[0, 1, 2]])

    def step(micro, seq, mbs):
        for c in chunks:
            c.zero_grad(set_to_none=True)
        got = []

        def loss_fn(mb, lp, ent):
            got.append(lp.detach())
            return (lp * torch.linspace(0.5, 1.5, lp.shape[1])).sum() + ent.sum(), {}

        get_forward_backward_func()(
            forward_step_func=make_forward_step(loss_fn, with_entropy=True), data_iterator=iter(micro),
            model=chunks, num_microbatches=1, seq_length=seq, micro_batch_size=mbs, forward_only=False)
        return [got[0]] + [q.grad.clone() for q in chunks[0].parameters()]

    # the patches must engage inside the real layers (TransformerLayer calls the MLP with padding_mask=...)
    from spro_mcore.parallel import cpu_compat

    swiglu, calls = cpu_compat._SwiGLU.forward, []
    cpu_compat._SwiGLU.forward = staticmethod(lambda ctx, x: calls.append(1) or swiglu(ctx, x))
    rms, norm_calls = cpu_compat._RMSNormFn.forward, []
    cpu_compat._RMSNormFn.forward = staticmethod(lambda ctx, *a: norm_calls.append(1) or rms(ctx, *a))
    out = {}
    for name, run in (("padded", lambda: step(padded, 20, 3)), ("packed", lambda: step(packed, pack_len, 1))):
        n, n_norm = len(calls), len(norm_calls)
        out[name] = run()
        out[name + "_swiglu_calls"] = len(calls) - n
        out[name + "_norm_calls"] = len(norm_calls) - n_norm
        with without_speed_patches():
            out[name + "_unpatched"] = run()
    return out


@needs_cpu_only
@pytest.mark.dist
def test_model_patched_equals_unpatched(tmp_path):
    from tests.models import tiny_hf
    from tests.multiproc import run_in_processes

    hf_dir = tiny_hf.make_tiny(str(tmp_path / "qwen2"), "qwen2", vocab=320)  # QKV bias: the addmm patch too
    out = run_in_processes(_model_grads, 1, hf_dir)[0]
    for name in ("padded", "packed"):
        assert out[name + "_swiglu_calls"] == 2  # one per layer of the tiny model
        assert out[name + "_norm_calls"] == 5  # two per layer and the final norm
        got, ref = out[name], out[name + "_unpatched"]
        assert len(got) == len(ref) > 10 and ref[0].abs().max() > 0
        for a, b in zip(got, ref):  # float rounding: the norm's closed-form backward sums in another order
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
