"""TP=2 and PP=2 (2 gloo processes, real megatron-core) equal TP=1 on the same HF checkpoint: forward-only
log-probs and entropy, the training forward_step's gradients (through megatron's forward_backward_func),
and the in-memory HF export on every rank. The vocabulary (301) is not divisible by TP: it is padded to 384
and the padded rows must not count."""

import pytest
import torch

from tests.models import tiny_hf
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist

B, L, T = 4, 40, 34


def _batch(vocab):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (B, L), generator=g)
    prompt_lens, response_lens = torch.tensor([6, 1, 3, 9]), torch.tensor([34, 20, 37, 31]).clamp(max=T)
    w1, w2 = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    return ids, prompt_lens, response_lens, w1, w2


def _run(tp, pp, hf_dir):
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from safetensors.torch import load_file

    from spro_mcore.models import export_hf_weights, load_model, make_forward_step, sequence_logprobs
    from spro_mcore.models.export import _gather_tp
    from spro_mcore.models.weight_map import iter_rules, shards_to_hf
    from spro_mcore.parallel import initialize_model_parallel

    initialize_model_parallel(tp, pp)
    chunks, arch = load_model(hf_dir)
    ids, p, r, w1, w2 = _batch(arch.vocab_size)
    # forward-only, 3 rows in micro-batches of 2 (the last one padded)
    lp, ent = sequence_logprobs(chunks, ids[:3], p[:3], r[:3], temperature=0.9, with_entropy=True,
                                micro_batch_size=2, chunk_tokens=13)

    # training flavour: loss = sum(w1 * logp + w2 * entropy) over micro-batches of 2
    micro = [dict(input_ids=ids[i:i + 2], prompt_lens=p[i:i + 2], response_lens=r[i:i + 2], w1=w1[i:i + 2],
                  w2=w2[i:i + 2]) for i in (0, 2)]

    def loss_fn(batch, logp, entropy):
        return (logp * batch["w1"]).sum() + (entropy * batch["w2"]).sum(), {}

    for c in chunks:
        c.train()
    get_forward_backward_func()(
        forward_step_func=make_forward_step(loss_fn, temperature=0.9, with_entropy=True, chunk_tokens=13,
                                            response_width=T),
        data_iterator=iter(micro), model=chunks, num_microbatches=2, seq_length=L, micro_batch_size=2,
        forward_only=False)
    grads = {}
    for rule in iter_rules(chunks):
        g = rule.param.grad
        shards = [g] if rule.kind == "replicated" else _gather_tp(g)
        for name, t in zip(rule.hf_names, shards_to_hf(rule.kind, shards, arch)):
            grads[name] = grads.get(name, 0) + t  # a tied embedding: input and output contributions add up
    exported = dict(export_hf_weights(chunks, arch, bucket_bytes=40_000))
    original = load_file(f"{hf_dir}/model.safetensors")
    export_ok = sorted(exported) == sorted(original) and all(torch.equal(exported[k], original[k]) for k in original)
    return {"lp": lp, "ent": ent, "grads": grads, "export_ok": export_ok}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf.make_tiny(str(tmp_path_factory.mktemp("hf") / "qwen2"), "qwen2", tied=True, vocab=301)


@pytest.fixture(scope="module")
def reference(hf_dir):
    return run_in_processes(_run, 1, 1, 1, hf_dir)[0]


def _merged(results):
    grads = {}
    for res in results:
        for k, v in res["grads"].items():
            grads[k] = grads.get(k, 0) + v
    return grads


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_parallel_equals_single(hf_dir, reference, tp, pp):
    ref = reference
    got = run_in_processes(_run, 2, tp, pp, hf_dir)
    assert ref["export_ok"] and all(g["export_ok"] for g in got)
    ref_grads = ref["grads"]
    assert ref_grads["model.embed_tokens.weight"].abs().max() > 1e-3
    for res in got:  # every rank returns the same forward-only results
        torch.testing.assert_close(res["lp"], ref["lp"], rtol=0, atol=1e-5)
        torch.testing.assert_close(res["ent"], ref["ent"], rtol=0, atol=1e-5)
    # with PP each stage holds part of the grads; the tied embedding's two contributions sum across stages
    grads = _merged(got) if pp > 1 else got[0]["grads"]
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=2e-5, msg=name)
