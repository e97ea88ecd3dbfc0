"""`parallel.vpp` (interleaved virtual pipeline) and `model.recompute_activations` through the real actor
(megatron-core over gloo): the same log-probs, loss, gradient norm and weight update as the plain path.

One PPO update of a 4-layer tiny Qwen2 on a fixed batch, compared with the plain PP=1 run: PP=2 (plain
1F1B), PP=2 x VPP=2 (two chunks of one layer per rank; 3 micro-batches padded to 4 for the interleaved
schedule) and PP=1 with full activation recomputation. Adam's epsilon is large, so the first step's update
is proportional to the gradient (lr * g / (|g| + eps)): equal updates mean equal gradients.
"""

from __future__ import annotations

import pytest
import torch

from tests.models import tiny_hf
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist

B, L, T = 6, 24, 16


def _batch(vocab: int):
    from spro_mcore.trainer.rollout_batch import RolloutBatch

    g = torch.Generator().manual_seed(5)
    response_lens = torch.tensor([16, 9, 12, 3, 16, 7])
    prompt_lens = torch.tensor([8, 4, 6, 2, 5, 8])
    batch = RolloutBatch(
        input_ids=torch.randint(0, vocab, (B, L), generator=g), prompt_lens=prompt_lens,
        response_lens=response_lens, response_mask=torch.arange(T)[None] < response_lens[:, None],
        engine_logprobs=torch.zeros(B, T), rewards=torch.zeros(B), group_ids=torch.arange(B) // 3)
    advantages = torch.randn(B, T, generator=g) * batch.response_mask
    return batch, advantages


def _run(pp: int, vpp, recompute: bool, hf_dir: str, rows_per_micro: int = 2):
    from megatron.core import tensor_parallel

    from spro_mcore.config.schema import Config
    from spro_mcore.parallel import initialize_model_parallel, seed_everything
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy

    calls = {"n": 0}
    checkpoint = tensor_parallel.checkpoint

    def counting_checkpoint(*args, **kwargs):  # megatron's full-layer recomputation goes through this
        calls["n"] += 1
        return checkpoint(*args, **kwargs)

    tensor_parallel.checkpoint = counting_checkpoint
    layout = initialize_model_parallel(pp=pp, vpp=vpp)
    seed_everything(0)
    cfg = Config()
    cfg.model.transformer_impl = "local"
    cfg.model.recompute_activations = recompute
    cfg.parallel.pp, cfg.parallel.vpp = pp, vpp
    cfg.optim.lr, cfg.optim.adam_eps, cfg.optim.clip_grad = 1e-2, 1.0, 0.0
    cfg.optim.use_distributed_optimizer = False
    cfg.trainer.micro_batch_tokens = rows_per_micro * L  # 2 rows: 3 micro-batches
    cfg.trainer.packing = False  # padded micro-batches: packing is refused with vpp (config/unwired.py)
    cfg.algo.kl_coef, cfg.algo.entropy_coef = 0.1, 0.01  # every term of the loss has a gradient
    actor = MegatronPolicy(cfg, layout, hf_dir, hf_dir, total_updates=1)
    batch, adv = _batch(actor.arch.vocab_size)
    before = {k: v.clone() for k, v in actor.export_weights()}
    old_lp, _ = actor.logprobs(batch)
    ref_lp, _ = actor.logprobs(batch, reference=True)
    metrics = actor.update(batch, adv, old_lp, ref_lp)
    new_lp, _ = actor.logprobs(batch)
    delta = {k: v - before[k] for k, v in actor.export_weights()}
    return {"chunks": len(actor.model), "recomputed": calls["n"], "old_lp": old_lp, "new_lp": new_lp,
            "loss": metrics["loss/policy"],
            "grad_norm": metrics["train/grad_norm"], "delta": delta}


def _runs(layouts: list[tuple], hf_dir: str) -> list[dict]:
    """`_run` for each (pp, vpp, recompute) in one set of processes (process starts dominate the time)."""
    from megatron.core import parallel_state as mpu

    out = []
    for pp, vpp, recompute in layouts:
        if mpu.model_parallel_is_initialized():
            mpu.destroy_model_parallel()
        out.append(_run(pp, vpp, recompute, hf_dir))
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf.make_tiny(str(tmp_path_factory.mktemp("hf") / "qwen2"), "qwen2", tied=True, vocab=301,
                             num_hidden_layers=4)


@pytest.fixture(scope="module")
def single(hf_dir):
    """(plain, recompute_activations) at PP=1."""
    return run_in_processes(_runs, 1, [(1, None, False), (1, None, True)], hf_dir)[0]


@pytest.fixture(scope="module")
def plain(single):
    return single[0]


def _assert_same(got: dict, ref: dict):
    torch.testing.assert_close(got["old_lp"], ref["old_lp"], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["new_lp"], ref["new_lp"], rtol=0, atol=1e-5)
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-7)
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert got["delta"].keys() == ref["delta"].keys()
    for name, d in ref["delta"].items():
        torch.testing.assert_close(got["delta"][name], d, rtol=1e-3, atol=1e-7, msg=name)


def test_update_moves_the_policy(plain):
    # the comparisons below are meaningful: the update changes the weights and the log-probs
    assert plain["chunks"] == 1 and plain["recomputed"] == 0
    assert max(d.abs().max().item() for d in plain["delta"].values()) > 1e-4
    assert (plain["new_lp"] - plain["old_lp"]).abs().max() > 1e-4


def test_pipeline_and_virtual_pipeline_equal_plain(hf_dir, plain):
    ranks = run_in_processes(_runs, 2, [(2, None, False), (2, 2, False)], hf_dir)
    for i, vpp in enumerate([None, 2]):
        got = [r[i] for r in ranks]
        assert [r["chunks"] for r in got] == [vpp or 1] * 2
        for r in got:  # every rank returns the broadcast log-probs, the replica's loss and the full export
            _assert_same(r, plain)


def test_recompute_activations_equals_plain(single, plain):
    got = single[1]
    assert got["recomputed"] > 0  # the layers really were recomputed in the backward pass
    _assert_same(got, plain)
