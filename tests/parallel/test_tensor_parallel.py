"""TP=2 on CPU (gloo, 2 processes, real megatron-core) equals TP=1 on the same weights: logits and
gradients. Wrong sharding (a wrong partition dim, a missing all-reduce) changes the numbers."""

import pytest
import torch

from tests.multiproc import run_in_processes
from tests.parallel import tiny_gpt

pytestmark = pytest.mark.dist


def _forward_backward(tp: int, full_weights=None, wrong_dim: bool = False):
    import torch.distributed as dist
    from megatron.core import tensor_parallel

    model = tiny_gpt.build(tp=tp, seed=0)
    if full_weights is not None:
        tiny_gpt.load_full(model, full_weights, wrong_dim=wrong_dim)
    tokens, pos = tiny_gpt.inputs()
    logits = model(tokens, pos, attention_mask=None)  # [B, S, V/tp]
    full_logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
    w = torch.randn(full_logits.shape, generator=torch.Generator().manual_seed(5))
    (full_logits * w).sum().backward()
    weights = {n: tiny_gpt.gather_tp(p.data, p) for n, p in model.named_parameters()}
    grads = {n: tiny_gpt.gather_tp(p.grad, p) for n, p in model.named_parameters()}
    return {"rank": dist.get_rank(), "logits": full_logits.detach(), "weights": weights, "grads": grads}


def test_tp2_equals_tp1():
    tp1 = run_in_processes(_forward_backward, 1, 1)[0]
    tp2 = run_in_processes(_forward_backward, 2, 2, tp1["weights"])
    for r in tp2:
        torch.testing.assert_close(r["logits"], tp1["logits"], rtol=0, atol=1e-5)
        assert r["grads"].keys() == tp1["grads"].keys()
        for name, g in tp1["grads"].items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-4, msg=name)
    # the comparison can fail: sharding the row-parallel (square) weights along the wrong dim disagrees
    wrong = run_in_processes(_forward_backward, 2, 2, tp1["weights"], True)[0]
    assert (wrong["logits"] - tp1["logits"]).abs().max() > 1e-3
