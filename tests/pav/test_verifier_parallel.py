"""The verifier's predictions at TP=2 and PP=2 (2 gloo processes, real megatron-core) equal TP=1, and so do
the gradients of a BCE step on the value head and the body (through megatron's forward_backward_func)."""
from __future__ import annotations

import pytest
import torch

from tests.models import tiny_hf
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist


def _batch():
    from spro_mcore.pav.batches import Response, make_batch

    g = torch.Generator().manual_seed(5)
    responses = []
    for i, (length, reads) in enumerate([(20, [3, 8, 19]), (12, [5, 11]), (30, [2, 9, 17, 29]), (7, [4, 6])]):
        ids = torch.randint(0, 300, (length,), generator=g).tolist()
        responses.append(Response(i, 0, ids, reads, torch.rand(len(reads), generator=g).tolist(), float(i % 2)))
    return make_batch(responses, length=32, steps=4, weights=(1.5, 0.75))


def _run(tp, pp, hf_dir):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from spro_mcore.models.unwrap import unwrap
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.pav.verifier import build_verifier, make_value_forward_step, micro_batches, predict_logits

    initialize_model_parallel(tp, pp)
    chunks, arch, _ = build_verifier(hf_dir, seed=7)
    batch = _batch()
    logits = predict_logits(chunks, batch, micro_batch_size=3)

    def loss_fn(mb, lg):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(lg, mb["targets"], reduction="none")
        return (bce * mb["weights"] * mb["read_mask"]).sum(), {}

    for c in chunks:
        c.train()
    get_forward_backward_func()(
        forward_step_func=make_value_forward_step(loss_fn), data_iterator=iter(micro_batches(batch, 2)),
        model=chunks, num_microbatches=2, seq_length=32, micro_batch_size=2, forward_only=False)
    last = unwrap(chunks[-1])
    head_grad = last.value_head.weight.grad.clone() if last.post_process else None
    first = unwrap(chunks[0])
    layer0 = first.decoder.layers[0].mlp.linear_fc2.weight.grad if first.pre_process else None
    if layer0 is not None and tp > 1:  # row-parallel fc2: shards along the input dimension
        from spro_mcore.models.export import _gather_tp
        layer0 = torch.cat(_gather_tp(layer0), dim=1)
    return {"logits": logits, "head_grad": head_grad, "fc2_grad": None if layer0 is None else layer0.clone()}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf.make_tiny(str(tmp_path_factory.mktemp("hf")), "qwen2", seed=1, tied=True)


@pytest.fixture(scope="module")
def reference(hf_dir):
    return run_in_processes(_run, 1, 1, 1, hf_dir)[0]


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_parallel_equals_single(hf_dir, reference, tp, pp):
    outs = run_in_processes(_run, 2, tp, pp, hf_dir)
    mask = _batch()["read_mask"]
    assert reference["logits"][mask].std() > 0.1  # the head reads different states
    for out in outs:
        torch.testing.assert_close(out["logits"][mask], reference["logits"][mask], atol=2e-5, rtol=1e-5)
    head = [o["head_grad"] for o in outs if o["head_grad"] is not None]
    fc2 = [o["fc2_grad"] for o in outs if o["fc2_grad"] is not None]
    assert head and fc2
    for g in head:
        torch.testing.assert_close(g, reference["head_grad"], atol=1e-5, rtol=1e-4)
    for g in fc2:
        torch.testing.assert_close(g, reference["fc2_grad"], atol=1e-5, rtol=1e-4)
