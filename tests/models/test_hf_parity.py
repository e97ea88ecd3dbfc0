"""Megatron (real megatron-core GPTModel, local spec, fp32, one process) log-probs and entropy equal HF
transformers' on the same safetensors checkpoint, for every supported family and option. The same run
shows the comparison can fail: a swapped q/k, gate/up or QK-norm weight breaks parity."""

import pytest
import torch

from tests.models import tiny_hf
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist

LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
CASES = {
    "qwen2_untied": dict(family="qwen2", tied=False),
    "qwen2_tied": dict(family="qwen2", tied=True),
    "qwen3_qknorm": dict(family="qwen3", tied=False),
    "llama": dict(family="llama", tied=True),
    "llama_rope_llama3": dict(family="llama", tied=True, rope_scaling=LLAMA3),
}
TEMPERATURE = 0.8


def _batch(vocab: int):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab, (3, 48), generator=g)
    prompt_lens, response_lens = torch.tensor([5, 12, 1]), torch.tensor([30, 36, 47])
    return ids, prompt_lens, response_lens


def _hf_reference(hf_dir, ids, prompt_lens, response_lens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logsm = torch.log_softmax(model(ids).logits.float() / TEMPERATURE, -1)  # position t predicts t+1
    width = int(response_lens.max())
    lp, ent = torch.zeros(len(ids), width), torch.zeros(len(ids), width)
    for i, (p, r) in enumerate(zip(prompt_lens.tolist(), response_lens.tolist())):
        rows = logsm[i, p - 1: p - 1 + r]
        lp[i, :r] = rows.gather(-1, ids[i, p: p + r, None]).squeeze(-1)
        ent[i, :r] = -(rows.exp() * rows).sum(-1)
    return lp, ent


def _parity(dirs: dict):
    from spro_mcore.models import load_model, score, sequence_logprobs
    from spro_mcore.parallel import initialize_model_parallel

    initialize_model_parallel(1, 1)
    out = {}
    for name, d in dirs.items():
        chunks, arch = load_model(d)
        ids, p, r = _batch(arch.vocab_size)
        ref_lp, ref_ent = _hf_reference(d, ids, p, r)
        lp, ent = sequence_logprobs(chunks, ids, p, r, temperature=TEMPERATURE, with_entropy=True,
                                    chunk_tokens=17, micro_batch_size=2)
        out[name] = {"lp": (lp - ref_lp).abs().max().item(), "ent": (ent - ref_ent).abs().max().item(),
                     "ref_lp": ref_lp, "padding_zero": bool((lp[0, 30:] == 0).all())}
        if name == "qwen3_qknorm":  # break one mapping at a time: parity must fail
            layer = chunks[0].decoder.layers[0]
            broken = {}
            for what, param, perm in _breakages(layer, arch):
                saved = param.detach().clone()
                with torch.no_grad():
                    param.copy_(perm(saved))
                bad, _ = sequence_logprobs(chunks, ids, p, r, temperature=TEMPERATURE)
                broken[what] = (bad - ref_lp).abs().max().item()
                with torch.no_grad():
                    param.copy_(saved)
            out[name]["broken"] = broken
            out[name]["score"] = (score(d, ids, temperature=TEMPERATURE)
                                  - _hf_reference(d, ids, torch.ones(3, dtype=torch.long),
                                                  torch.full((3,), 47))[0]).abs().max().item()
    return out


def _breakages(layer, arch):
    d, per = arch.head_dim, arch.num_heads // arch.num_kv_heads

    def swap_q_k(w):  # first q head <-> the k head of group 0
        w = w.clone()
        q0, k0 = w[:d].clone(), w[per * d:(per + 1) * d].clone()
        w[:d], w[per * d:(per + 1) * d] = k0, q0
        return w

    attn, mlp = layer.self_attention, layer.mlp
    return [
        ("q<->k", attn.linear_qkv.weight, swap_q_k),
        ("gate<->up", mlp.linear_fc1.weight, lambda w: torch.cat(w.chunk(2)[::-1])),
        ("q_norm<->k_norm", attn.q_layernorm.weight, lambda w: attn.k_layernorm.weight.detach().clone()),
    ]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: tiny_hf.make_tiny(str(root / name), **kw) for name, kw in CASES.items()}


def test_megatron_logprobs_equal_hf_transformers(tiny_dirs):
    res = run_in_processes(_parity, 1, tiny_dirs, timeout=300)[0]
    for name, r in res.items():
        assert r["lp"] <= 1e-4, (name, r["lp"])
        assert r["ent"] <= 1e-4, (name, r["ent"])
        assert r["padding_zero"], name
    # the options matter: rope scaling changes the reference, so its parity is not vacuous
    assert (res["llama"]["ref_lp"] - res["llama_rope_llama3"]["ref_lp"]).abs().max() > 1e-2
    for what, diff in res["qwen3_qknorm"]["broken"].items():
        assert diff > 1e-2, f"parity did not notice a wrong mapping ({what}: {diff})"
    assert res["qwen3_qknorm"]["score"] <= 1e-4
