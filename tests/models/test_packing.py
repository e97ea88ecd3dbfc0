"""Packed (THD) micro-batches give the padded path's log-probs, entropies and gradients (real megatron-core,
fp32, chunked vocab-parallel kernel) for Llama, Qwen2 and Qwen3 at TP=1, TP=2 and PP=2 over gloo. One pack
is exactly at the token budget and holds a 2-token sequence (1-token prompt, 1-token response) next to a long
one; the others end in filler segments. The comparison can fail: packing without the segment boundaries
(attention across sequences) is shown to differ."""

import pytest
import torch

from tests.models import tiny_hf
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist

FAMILIES = {"llama": dict(family="llama", tied=True), "qwen2": dict(family="qwen2", tied=False),
            "qwen3": dict(family="qwen3", tied=False)}
PROMPT, RESPONSE = [1, 5, 3, 9, 2], [1, 41, 20, 14, 1]
GROUPS = [[0, 1], [2, 3], [4]]  # 2 + 46 = 48 tokens (the budget), 46 + filler, 3 + filler
BUDGET, T = 48, 41


def _batch(vocab):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (5, 46), generator=g)
    w1, w2 = torch.randn(5, T, generator=g), torch.randn(5, T, generator=g)
    return ids, torch.tensor(PROMPT), torch.tensor(RESPONSE), w1, w2


def _grads(chunks, micro, seq, mbs):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from spro_mcore.models import make_forward_step

    def loss_fn(batch, logp, entropy):
        return (logp * batch["w1"]).sum() + (entropy * batch["w2"]).sum(), {}

    for c in chunks:
        c.train()
        c.zero_grad(set_to_none=True)
    get_forward_backward_func()(
        forward_step_func=make_forward_step(loss_fn, temperature=0.9, with_entropy=True, chunk_tokens=13,
                                            response_width=T),
        data_iterator=iter(micro), model=chunks, num_microbatches=len(micro), seq_length=seq,
        micro_batch_size=mbs, forward_only=False)
    return {n: p.grad.clone() for c in chunks for n, p in c.named_parameters()}


def _run(tp, pp, dirs):
    from spro_mcore.models import load_model, sequence_logprobs
    from spro_mcore.models.logprobs import build_packs
    from spro_mcore.parallel import initialize_model_parallel

    initialize_model_parallel(tp, pp)
    out = {}
    for name, d in dirs.items():
        chunks, arch = load_model(d)
        ids, p, r, w1, w2 = _batch(arch.vocab_size)
        kw = dict(temperature=0.9, with_entropy=True, chunk_tokens=13, response_width=T)
        lp_pad, ent_pad = sequence_logprobs(chunks, ids, p, r, micro_batch_size=2, **kw)
        lp_pack, ent_pack = sequence_logprobs(chunks, ids, p, r, packs=GROUPS, **kw)
        fields = {"w1": w1, "w2": w2}
        padded = [dict(input_ids=ids[i:i + 2], prompt_lens=p[i:i + 2], response_lens=r[i:i + 2], w1=w1[i:i + 2],
                       w2=w2[i:i + 2]) for i in (0, 2)]
        padded.append(dict(input_ids=ids[[4, 4]], prompt_lens=p[[4, 4]], response_lens=torch.tensor([1, 0]),
                           w1=w1[[4, 4]], w2=w2[[4, 4]]))
        g_pad = _grads(chunks, padded, ids.shape[1], 2)
        packs, pack_len = build_packs(chunks, ids, p, r, GROUPS, fields)
        g_pack = _grads(chunks, packs, pack_len, 1)
        # the same packs without boundaries: one causal sequence per pack (what packing must not do)
        joined = [{k: v for k, v in mb.items()} for mb in packs]
        for mb in joined:
            mb["cu_seqlens"] = torch.tensor([0, pack_len], dtype=torch.int32)
            mb["position_ids"] = torch.arange(pack_len)[None]
        lp_joined = _logprobs_of(chunks, joined, pack_len)
        out[name] = {"pack_len": pack_len, "lp": (lp_pad, lp_pack), "ent": (ent_pad, ent_pack),
                     "grads": (g_pad, g_pack), "lp_joined": lp_joined}
    return out


def _logprobs_of(chunks, packs, pack_len):
    """Row-ordered log-probs of hand-made packs (rows 2,3 sit second in pack 1: compare them)."""
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from spro_mcore.models import make_forward_step

    def collect(batch, lp, ent):
        return lp.new_zeros(()), {"lp": lp}

    with torch.no_grad():
        out = get_forward_backward_func()(
            forward_step_func=make_forward_step(collect, temperature=0.9, chunk_tokens=13, response_width=T),
            data_iterator=iter(packs), model=chunks, num_microbatches=len(packs), seq_length=pack_len,
            micro_batch_size=1, forward_only=True)
    return out[1]["lp"] if mpu.is_pipeline_last_stage() else None


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {n: tiny_hf.make_tiny(str(root / n), **kw) for n, kw in FAMILIES.items()}


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (1, 2)])
def test_packed_equals_padded(dirs, tp, pp):
    results = run_in_processes(_run, tp * pp, tp, pp, dirs)
    for rank, res in enumerate(results):
        for name, r in res.items():
            assert r["pack_len"] == BUDGET
            lp_pad, lp_pack = r["lp"]
            assert lp_pad.abs().min() >= 0 and (lp_pad != 0).sum() == sum(RESPONSE)
            torch.testing.assert_close(lp_pack, lp_pad, rtol=0, atol=1e-5, msg=f"{name} rank {rank} log-probs")
            torch.testing.assert_close(r["ent"][1], r["ent"][0], rtol=0, atol=1e-5, msg=f"{name} entropy")
            g_pad, g_pack = r["grads"]
            assert g_pad.keys() == g_pack.keys() and max(g.abs().max() for g in g_pad.values()) > 1e-3
            for k in g_pad:
                torch.testing.assert_close(g_pack[k], g_pad[k], rtol=1e-5, atol=1e-5, msg=f"{name} grad {k}")
            if r["lp_joined"] is not None:  # attention across the boundary changes the second sequence
                assert (r["lp_joined"][1] - lp_pad[3]).abs().max() > 1e-3
