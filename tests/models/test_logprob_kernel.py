"""The chunked log-prob / entropy kernel (one rank) equals the plain full-logits log_softmax, values AND
gradients, with temperature, padded vocabulary rows and chunks that do not divide the token count."""

import pytest
import torch

from spro_mcore.models.logprob_kernel import reference_logprobs, vocab_parallel_logprobs

pytestmark = pytest.mark.unit


def _case(dtype=torch.float32, n=37, h=16, vocab=101, padded=128):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(padded, h, generator=g, dtype=dtype)
    weight[vocab:] = 0  # padded rows as loaded (zeros): they must not count in the softmax
    weight.requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    wl, we = torch.randn(n, generator=g, dtype=dtype), torch.randn(n, generator=g, dtype=dtype)
    return hidden, weight, targets, wl, we


def _grads(fn, hidden, weight, wl, we):
    lp, ent = fn()
    (lp.double() * wl).sum().add((ent.double() * we).sum()).backward()
    out = (lp.detach(), ent.detach(), hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    return out


@pytest.fixture(params=["kept", "recomputed"])
def backward_mode(request, monkeypatch):
    """Both backwards of one CPU rank: the log-softmax kept from the forward (small [N, V], the default
    here) and recomputed chunk by chunk (what every large vocabulary gets)."""
    if request.param == "recomputed":
        monkeypatch.setattr("spro_mcore.models.logprob_kernel.KEEP_LOGITS_BYTES", 0)
    return request.param


@pytest.mark.parametrize("chunk", [1, 8, 1000])
def test_chunked_equals_full_logits_values_and_grads(chunk, backward_mode):
    hidden, weight, targets, wl, we = _case()
    temp = 0.7
    ref = _grads(lambda: reference_logprobs(hidden, weight, targets, vocab_size=101, temperature=temp),
                 hidden, weight, wl, we)
    got = _grads(lambda: vocab_parallel_logprobs(hidden, weight, targets, vocab_size=101, temperature=temp,
                                                 chunk_tokens=chunk, with_entropy=True), hidden, weight, wl, we)
    for name, a, b in zip(("logp", "entropy", "d hidden", "d weight"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=name)
    assert got[3][101:].abs().max() == 0  # padded rows get no gradient
    assert ref[1].min() > 0 and ref[2].abs().max() > 1e-3  # a non-trivial case


def test_temperature_and_logprob_only_path(backward_mode):
    hidden, weight, targets, wl, _ = _case(dtype=torch.float32)
    lp1, ent = vocab_parallel_logprobs(hidden, weight, targets, vocab_size=101, chunk_tokens=5)
    lp2, _ = vocab_parallel_logprobs(hidden, weight, targets, vocab_size=101, temperature=2.0, chunk_tokens=5)
    ref1, _ = reference_logprobs(hidden, weight, targets, vocab_size=101)
    ref2, _ = reference_logprobs(hidden, weight, targets, vocab_size=101, temperature=2.0)
    assert ent is None
    torch.testing.assert_close(lp1, ref1, rtol=0, atol=1e-5)
    torch.testing.assert_close(lp2, ref2, rtol=0, atol=1e-5)
    assert (lp1 - lp2).abs().max() > 0.1
    # the logprob-only backward (no entropy grad) too
    lp1.mul(wl).sum().backward()
    g = hidden.grad.clone()
    hidden.grad = None
    ref1b, _ = reference_logprobs(hidden, weight, targets, vocab_size=101)
    ref1b.mul(wl).sum().backward()
    torch.testing.assert_close(g, hidden.grad, rtol=1e-4, atol=1e-6)


def test_bf16_weights_close_to_fp32():
    hidden, weight, targets, _, _ = _case(dtype=torch.float32)
    lp, ent = vocab_parallel_logprobs(hidden.detach().bfloat16(), weight.detach().bfloat16(), targets,
                                      vocab_size=101, chunk_tokens=7, with_entropy=True)
    ref, rent = reference_logprobs(hidden.detach(), weight.detach(), targets, vocab_size=101)
    assert lp.dtype == torch.float32
    assert (lp - ref).abs().max() < 0.2 and (ent - rent).abs().max() < 0.2


def test_bad_targets_rejected():
    hidden, weight, targets, _, _ = _case()
    with pytest.raises(ValueError, match="target token ids"):
        vocab_parallel_logprobs(hidden, weight, targets + 200, vocab_size=101)


def test_one_rank_is_the_fused_log_softmax_same_logprobs_with_and_without_entropy():
    """One rank: one fused log_softmax per chunk (no separate max/exp passes), log-probs bit for bit the same
    with and without entropy (the policy's pass asks for entropy, the reference's does not: the first step's
    KL is exactly 0), and equal to the full-logits reference with gradients (hidden and weight, temperature
    1 and not; values ~10-30, so float32 sums round at ~1e-6 relative)."""
    from torch.profiler import ProfilerActivity, profile

    hidden, weight, targets, wl, we = _case()
    for temp in (1.0, 0.6):
        fused = _grads(lambda: (vocab_parallel_logprobs(hidden, weight, targets, vocab_size=101, temperature=temp,
                                                        chunk_tokens=16)[0], torch.zeros(())),
                       hidden, weight, wl, we)
        with_ent, _ = vocab_parallel_logprobs(hidden, weight, targets, vocab_size=101, temperature=temp,
                                              chunk_tokens=16, with_entropy=True)
        assert torch.equal(with_ent.detach(), fused[0])
        ref = _grads(lambda: (reference_logprobs(hidden, weight, targets, vocab_size=101, temperature=temp)[0],
                              torch.zeros(())), hidden, weight, wl, we)
        for name, a, b in zip(("logp", "d hidden", "d weight"), fused[:1] + fused[2:], ref[:1] + ref[2:]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    with profile(activities=[ProfilerActivity.CPU]) as p, torch.no_grad():
        vocab_parallel_logprobs(hidden, weight, targets, vocab_size=101, chunk_tokens=16)
    names = [e.name for e in p.events()]
    assert names.count("aten::_log_softmax") == 3 and "aten::exp_" not in names  # 37 tokens: 3 chunks


def test_kept_log_softmax_saves_the_backward_gemm_and_matches_recompute(monkeypatch):
    """The kept path runs two GEMMs a chunk in the backward (dh, dW) instead of three (no logits recompute),
    gives the recompute path's gradients (to float32 rounding: z is rebuilt as log-softmax + logsumexp), and
    its forward keeps the no-grad pass's chunks: the same log-probs bit for bit (PPO ratio exactly 1)."""
    from torch.profiler import ProfilerActivity, profile

    import spro_mcore.models.logprob_kernel as kernel

    hidden, weight, targets, wl, we = _case()

    def run():
        lp, ent = vocab_parallel_logprobs(hidden, weight, targets, vocab_size=101, temperature=0.7,
                                          chunk_tokens=16, with_entropy=True)  # 37 tokens: 3 chunks
        with torch.no_grad():
            no_grad, _ = vocab_parallel_logprobs(hidden, weight, targets, vocab_size=101, temperature=0.7,
                                                 chunk_tokens=16)
        assert torch.equal(lp.detach(), no_grad)
        loss = (lp * wl).sum() + (ent * we).sum()
        with profile(activities=[ProfilerActivity.CPU]) as p:
            loss.backward()
        gemms = sum(e.name in ("aten::mm", "aten::addmm", "aten::addmm_") for e in p.events())
        out = (hidden.grad.clone(), weight.grad.clone())
        hidden.grad = weight.grad = None
        return out, gemms

    kept, kept_gemms = run()
    monkeypatch.setattr(kernel, "KEEP_LOGITS_BYTES", 0)
    recomputed, recomputed_gemms = run()
    assert (kept_gemms, recomputed_gemms) == (2 * 3, 3 * 3)
    for a, b in zip(kept, recomputed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
