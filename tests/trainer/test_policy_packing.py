"""The policy's packed path (trainer.packing) against its padded path on real megatron-core: the log-prob
passes agree, the first update's PPO ratio is exactly 1, and the step's gradient (DDP's main_grad after
`update`) is the same with packing on or off, for any number of micro-batches (token budget) and over two
data-parallel ranks whose rows are spread by tokens (dp_balance.py), also when the ranks run different
numbers of micro-batches or one holds a single row, and at TP=2 x DP=2 (4 processes; the gradients compared as
full HF tensors). Lengths are skewed like RL rollouts."""

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


def _hf_grads(actor) -> torch.Tensor:
    """The step's gradient as full HF tensors (TP shards gathered, q/k/v and gate/up unpacked, vocab padding
    dropped), flattened in name order: comparable across tensor-parallel sizes."""
    from spro_mcore.models.weight_map import iter_rules, shards_to_hf
    from spro_mcore.parallel import collectives

    out = {}
    for rule in iter_rules(actor.model):
        g = rule.param.main_grad
        shards = [g] if rule.kind == "replicated" or actor.layout.tp == 1 else collectives.all_gather(g, group="tp")
        out.update(zip(rule.hf_names, shards_to_hf(rule.kind, shards, actor.arch)))
    return torch.cat([out[k].flatten() for k in sorted(out)])


def _step(hf_dir, runs, tp=1):
    import torch.distributed as dist

    from spro_mcore.config.schema import Config
    from spro_mcore.parallel import initialize_model_parallel, seed_everything
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy

    layout = initialize_model_parallel(tp, 1)
    out = []
    for run in runs:  # (packing, budget[, rows per rank, mini-batches, lr])
        packing, budget, share, mini_batches, lr = (*run, None, 1, 1e-3)[:5] if len(run) == 2 else run
        seed_everything(3)
        cfg = Config()
        cfg.model.transformer_impl = "local"
        cfg.parallel.tp = tp
        cfg.model.logprob_chunk_tokens = 7
        cfg.optim.use_distributed_optimizer, cfg.optim.clip_grad, cfg.optim.lr = False, 0.0, lr
        cfg.rollout.max_new_tokens, cfg.rollout.temperature = T, 0.9
        cfg.algo.kl_coef = 0.1
        cfg.trainer.packing, cfg.trainer.micro_batch_tokens = packing, budget
        cfg.trainer.mini_batches = mini_batches
        actor = MegatronPolicy(cfg, layout, hf_dir, hf_dir, total_updates=mini_batches)
        full, adv = _batch(actor.arch.vocab_size)
        # this data-parallel rank's rows (interleaved, or as given per rank)
        rows = share[layout.dp_rank] if share else list(range(layout.dp_rank, len(full), layout.dp))
        batch, adv = full.select(rows), adv[rows][:, :full.select(rows).response_mask.shape[1]]
        old, ent = actor.logprobs(batch, with_entropy=True)
        ref, _ = actor.logprobs(batch, reference=True)
        metrics = actor.update(batch, adv, old, ref)
        grads = torch.cat([p.main_grad.flatten() for p in actor._params()])
        n_packs = len(actor.packs(batch, torch.arange(len(batch)))) if packing else None
        micro = actor._update_micro_batches(batch, {"response_mask": batch.response_mask.float()},
                                            torch.arange(len(batch)))[0]
        assert ("cu_seqlens" in micro[0]) == packing  # trainer.packing picks the layout
        updates = []
        if layout.dp > 1 and packing:  # the balanced share of each mini-batch this rank ran
            from spro_mcore.trainer.policy.dp_balance import gather_replicas

            view = gather_replicas(batch, {}, layout.dp_rank)
            updates = [view.share(r, budget) for r in view.mini_batch_rows(mini_batches)]
            updates = [(s.rows, len(s.packs)) for s in updates]  # rows of the replicas' concatenation
        out.append({"old": old, "ent": ent, "ref": ref, "metrics": metrics, "grads": grads,
                    "hf_grads": _hf_grads(actor), "rows": rows,
                    "n_packs": n_packs, "shares": updates})
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


def _lens(rows):
    return sum(PROMPT[i] + RESPONSE[i] for i in rows)


ORDER = [0, 7, 1, 2, 3, 4, 5, 6]
# (packing, budget, rows of each rank, mini-batches, lr); the one-rank references below, same index
DP_RUNS = [
    (True, 24, [[0, 2, 4, 6], [1, 3, 5, 7]], 1, 1e-3),  # slices of 32 vs 47 tokens
    (True, 12, [[0, 1, 2, 3, 4, 5, 7], [6]], 1, 1e-3),  # 65 vs 14 tokens; the balanced shares run 4 vs 2 packs
    # 7 mini-batches, rank 1 holding one row: the global mini-batches are {0, 7}, {1}, ..., {6} (as one rank
    # splits ORDER), so one rank has nothing to train on in the last six; lr 0 keeps the weights
    (True, 4096, [ORDER[:1] + ORDER[2:], [7]], 7, 0.0),
    (False, 4096, [[0, 2, 4, 6], [1, 3, 5, 7]], 1, 1e-3),  # padded: fixed slices, their imbalance logged
]
REF_RUNS = [(False, 4096, None, 1, 1e-3), (False, 4096, [ORDER], 7, 0.0)]
REF_OF = [0, 0, 1, 0]


@pytest.fixture(scope="module")
def single_runs(hf_dir):
    """The one-rank padded references (REF_RUNS) in one 1-process job."""
    return run_in_processes(_step, 1, hf_dir, REF_RUNS)[0]


@pytest.fixture(scope="module")
def dp_runs(hf_dir, single_runs):
    """Every data-parallel case in one 2-process job, with its one-rank padded reference."""
    single = single_runs
    ranks = run_in_processes(_step, 2, hf_dir, DP_RUNS)
    return [single[i] for i in REF_OF], [[r[k] for r in ranks] for k in range(len(DP_RUNS))]


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_balanced_over_two_data_parallel_ranks_equals_one(dp_runs, case):
    """DP=2 with rows spread by tokens == DP=1 on the whole batch: the same log-probs for each rank's own
    rows, the same gradient (DDP sums the shares, each normalised by the global counts), the first ratio 1.
    A rank with no rows in a mini-batch runs a masked row (no loss, no gradient, the same metric keys)."""
    single, runs = dp_runs[0][case], dp_runs[1][case]
    share = DP_RUNS[case][2]
    packing = DP_RUNS[case][0]
    # one deterministic assignment, computed alike on every rank: the ranks' shares partition each mini-batch
    for (rows0, _), (rows1, _) in zip(runs[0]["shares"], runs[1]["shares"], strict=True):
        assert not set(rows0) & set(rows1)
    if packing:
        assert sorted(r for run in runs for rows, _ in run["shares"] for r in rows) == list(range(len(PROMPT)))
    for run in runs:
        at = [single["rows"].index(r) for r in run["rows"]]  # the reference's rows of this rank's rows
        for k in ("old", "ent", "ref"):
            torch.testing.assert_close(run[k], single[k][at][:, :run[k].shape[1]], rtol=0, atol=1e-5, msg=k)
        assert single["grads"].abs().max() > 1e-3
        torch.testing.assert_close(run["grads"], single["grads"], rtol=1e-5, atol=1e-6)
        assert run["metrics"]["ppo/approx_kl"] == 0.0 and abs(run["metrics"]["ppo/ratio_mean"] - 1.0) < 1e-7
        for k in ("loss/policy", "loss/kl", "entropy/mean"):
            assert abs(run["metrics"][k] - single["metrics"][k]) <= 1e-5 * max(1.0, abs(single["metrics"][k])), k
    if case == 3:  # padded micro-batches keep the fixed slices; the metric reports their real-token skew
        slices = max(_lens(r) for r in share) / (_lens(range(len(PROMPT))) / 2)
        assert abs(runs[0]["metrics"]["perf/dp_token_imbalance"] - slices) < 1e-9
    if case < 2:
        assert sorted(runs[0]["shares"][0][0]) != list(range(len(share[0])))  # rows did move between ranks
        slices = max(_lens(r) for r in share) / (_lens(range(len(PROMPT))) / 2)
        assert slices > 1.15  # the fixed slices are skewed ...
        assert runs[0]["metrics"]["perf/dp_token_imbalance"] < 1.05 < slices  # ... the balanced shares are not
    if case == 1:  # the ranks ran different numbers of micro-batches (and nothing hung)
        assert runs[0]["shares"][0][1] != runs[1]["shares"][0][1]
    if case == 2:  # each single-row mini-batch: one rank computed it, the other ran its masked row
        for (rows0, _), (rows1, _) in zip(runs[0]["shares"][1:], runs[1]["shares"][1:]):
            assert sorted((len(rows0), len(rows1))) == [0, 1]


def test_balanced_at_tp2_dp2_equals_one_process(hf_dir, single_runs):
    """TP=2 x DP=2 (4 processes), packed, rows spread by tokens over the two replicas (65 vs 14 tokens given,
    so the balanced shares differ in pack count): each rank's log-probs and the step's full gradient equal
    the single-process padded step on the whole batch; the first ratio is exactly 1."""
    single = single_runs[0]
    ranks = [r[0] for r in run_in_processes(_step, 4, hf_dir, [DP_RUNS[1]], 2)]
    # ranks 0, 1 are the first replica's TP group, 2, 3 the second's (Megatron's default order: tp fastest)
    assert ranks[0]["rows"] == ranks[1]["rows"] != ranks[2]["rows"] == ranks[3]["rows"]
    assert ranks[0]["shares"] == ranks[1]["shares"] and ranks[2]["shares"] == ranks[3]["shares"]
    assert len(ranks[0]["shares"][0][0]) + len(ranks[2]["shares"][0][0]) == len(PROMPT)
    assert ranks[0]["shares"][0][1] != ranks[2]["shares"][0][1]  # unequal micro-batch counts did not hang
    assert single["hf_grads"].abs().max() > 1e-3
    for run in ranks:
        assert run["grads"].numel() < single["grads"].numel()  # really sharded
        at = [single["rows"].index(r) for r in run["rows"]]
        for k in ("old", "ent", "ref"):
            torch.testing.assert_close(run[k], single[k][at][:, :run[k].shape[1]], rtol=0, atol=1e-5, msg=k)
        torch.testing.assert_close(run["hf_grads"], single["hf_grads"], rtol=1e-5, atol=1e-6)
        assert run["metrics"]["ppo/approx_kl"] == 0.0 and abs(run["metrics"]["ppo/ratio_mean"] - 1.0) < 1e-7
        assert run["metrics"]["perf/dp_token_imbalance"] < 1.05
        for k in ("loss/policy", "loss/kl", "entropy/mean"):
            assert abs(run["metrics"][k] - single["metrics"][k]) <= 1e-5 * max(1.0, abs(single["metrics"][k])), k
