"""The policy's packed path (trainer.packing) against its padded path on real megatron-core: the log-prob
passes agree, the first update's PPO ratio is exactly 1, and the step's gradient (DDP's main_grad after
`update`) is the same with packing on or off, for any number of micro-batches (token budget) and over two
data-parallel ranks holding half of the rows each. Lengths are skewed like RL rollouts."""

import pytest
import torch

from tests.models import tiny_hf
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist

PROMPT = [3, 1, 5, 2, 4, 1, 2, 6]
RESPONSE = [2, 30, 1, 4, 3, 1, 12, 2]  # many short, a long tail
T = max(RESPONSE)


def _batch(vocab):
    from spro_mcore.trainer.rollout_batch import RolloutBatch

    g = torch.Generator().manual_seed(11)
    p, r = torch.tensor(PROMPT), torch.tensor(RESPONSE)
    L = int((p + r).max())
    ids = torch.randint(0, vocab, (len(p), L), generator=g)
    mask = torch.arange(T)[None] < r[:, None]
    batch = RolloutBatch(input_ids=ids, prompt_lens=p, response_lens=r, response_mask=mask,
                         engine_logprobs=torch.zeros(len(p), T), rewards=torch.zeros(len(p)),
                         group_ids=torch.arange(len(p)) // 4)
    adv = torch.randn(len(p), T, generator=g) * mask
    return batch, adv


def _step(hf_dir, runs):
    import torch.distributed as dist

    from spro_mcore.config.schema import Config
    from spro_mcore.parallel import initialize_model_parallel, seed_everything
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy

    layout = initialize_model_parallel(1, 1)
    out = []
    for packing, budget in runs:
        seed_everything(3)
        cfg = Config()
        cfg.model.transformer_impl = "local"
        cfg.model.logprob_chunk_tokens = 7
        cfg.optim.use_distributed_optimizer, cfg.optim.clip_grad, cfg.optim.lr = False, 0.0, 1e-3
        cfg.rollout.max_new_tokens, cfg.rollout.temperature = T, 0.9
        cfg.algo.kl_coef = 0.1
        cfg.trainer.packing, cfg.trainer.micro_batch_tokens = packing, budget
        actor = MegatronPolicy(cfg, layout, hf_dir, hf_dir, total_updates=1)
        full, adv = _batch(actor.arch.vocab_size)
        rows = list(range(layout.dp_rank, len(full), layout.dp))  # this data-parallel rank's share
        batch, adv = full.select(rows), adv[rows][:, :full.select(rows).response_mask.shape[1]]
        old, ent = actor.logprobs(batch, with_entropy=True)
        ref, _ = actor.logprobs(batch, reference=True)
        metrics = actor.update(batch, adv, old, ref)
        grads = torch.cat([p.main_grad.flatten() for p in actor._params()])
        n_packs = len(actor.packs(batch, torch.arange(len(batch)))) if packing else None
        micro = actor._update_micro_batches(batch, {"response_mask": batch.response_mask.float()},
                                            torch.arange(len(batch)))[0]
        assert ("cu_seqlens" in micro[0]) == packing  # trainer.packing picks the layout
        out.append({"old": old, "ent": ent, "ref": ref, "metrics": metrics, "grads": grads, "rows": rows,
                    "n_packs": n_packs})
        dist.barrier()
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf.make_tiny(str(tmp_path_factory.mktemp("hf") / "qwen2"), "qwen2", vocab=320)


RUNS = [(False, 4096), (True, 4096), (True, 24)]  # 24 < the longest sequence (31): it packs alone


def test_packed_update_equals_padded(hf_dir):
    padded, packed, packed_small = run_in_processes(_step, 1, hf_dir, RUNS)[0]
    assert packed["n_packs"] == 1 and packed_small["n_packs"] >= 3  # the budget really splits the batch
    for run in (packed, packed_small):
        for k in ("old", "ent", "ref"):
            torch.testing.assert_close(run[k], padded[k], rtol=0, atol=1e-5, msg=k)
        # every log-ratio is exactly 0 (the shares of the mean ratio add up in fp32 over the micro-batches)
        assert run["metrics"]["ppo/approx_kl"] == 0.0 and abs(run["metrics"]["ppo/ratio_mean"] - 1.0) < 1e-7
        assert padded["grads"].abs().max() > 1e-3
        torch.testing.assert_close(run["grads"], padded["grads"], rtol=1e-5, atol=1e-6)
        for k in ("loss/policy", "loss/kl", "entropy/mean", "train/grad_norm"):
            assert abs(run["metrics"][k] - padded["metrics"][k]) <= 1e-5 * max(1.0, abs(padded["metrics"][k])), k


def test_packed_update_over_two_data_parallel_ranks(hf_dir):
    single = run_in_processes(_step, 1, hf_dir, RUNS[:1])[0][0]
    ranks = run_in_processes(_step, 2, hf_dir, [(True, 24)])
    for r in ranks:  # DDP sums the ranks' shares: the same gradient as one rank holding every row
        run = r[0]
        torch.testing.assert_close(run["old"], single["old"][run["rows"]][:, :run["old"].shape[1]], rtol=0, atol=1e-5)
        torch.testing.assert_close(run["grads"], single["grads"], rtol=1e-5, atol=1e-6)
        assert run["metrics"]["ppo/approx_kl"] == 0.0
