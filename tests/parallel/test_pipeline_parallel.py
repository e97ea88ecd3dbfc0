"""PP=2 forward-only through megatron-core's pipeline schedule (gloo, 2 processes) equals PP=1."""

import pytest
import torch

from tests.multiproc import run_in_processes
from tests.parallel import tiny_gpt

pytestmark = pytest.mark.dist


def _pipeline_forward(pp: int, full_weights, num_microbatches: int = 2):
    import torch.distributed as dist
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    model = tiny_gpt.build(pp=pp, seed=0)
    # layer numbering is global; local module names restart at 0 on every stage
    offset = mpu.get_pipeline_model_parallel_rank() * (tiny_gpt.LAYERS // pp)
    local = {}
    for name in dict(model.named_parameters()):
        if ".layers." in name:
            head, rest = name.split(".layers.", 1)
            idx, tail = rest.split(".", 1)
            local[name] = full_weights[f"{head}.layers.{int(idx) + offset}.{tail}"]
        else:
            local[name] = full_weights[name]
    tiny_gpt.load_full(model, local)
    tokens, pos = tiny_gpt.inputs(batch=4)
    micro = list(zip(tokens.chunk(num_microbatches), pos.chunk(num_microbatches)))
    it = iter(micro)
    outputs = []

    def forward_step(data_iterator, model):
        tok, p = next(data_iterator)
        out = model(tok, p, attention_mask=None)

        def collect(output_tensor):
            outputs.append(output_tensor.detach())
            return output_tensor.sum(), {}

        return out, collect

    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=it, model=[model], num_microbatches=num_microbatches,
        seq_length=tiny_gpt.SEQ, micro_batch_size=tokens.shape[0] // num_microbatches, forward_only=True,
    )
    logits = torch.cat(outputs) if outputs else None
    return {"rank": dist.get_rank(), "last": mpu.is_pipeline_last_stage(), "logits": logits,
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}


def test_pp2_forward_only_equals_pp1():
    ref_model_weights = run_in_processes(_weights_of_fresh_model, 1)[0]
    pp1 = run_in_processes(_pipeline_forward, 1, 1, ref_model_weights)[0]
    pp2 = run_in_processes(_pipeline_forward, 2, 2, ref_model_weights)
    last = [r for r in pp2 if r["last"]]
    assert len(last) == 1 and last[0]["logits"] is not None
    assert [r["logits"] is None for r in pp2] == [True, False]
    torch.testing.assert_close(last[0]["logits"], pp1["logits"], rtol=0, atol=1e-6)
    # the stages really hold different layers: a wrong layer offset would break equality
    assert any(".layers.0." in n for n in pp2[1]["weights"])


def _weights_of_fresh_model():
    model = tiny_gpt.build(seed=1)
    return {n: p.detach().clone() for n, p in model.named_parameters()}
