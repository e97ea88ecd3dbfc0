"""Global-batch aggregation: every loss_agg mode against its textbook formula on the whole batch, and the
invariance that matters in training: a batch split into uneven micro-batches on several data-parallel
'ranks', each normalised by the global counts, sums to the one-big-batch loss, gradient and metrics."""
from __future__ import annotations

import pytest
import torch

from spro_mcore.algo.aggregation import LOSS_AGG_MODES, aggregate, local_counts
from spro_mcore.algo.policy_loss import ppo_policy_loss

pytestmark = pytest.mark.unit
NORM_LEN = 11.0


def random_batch(seed: int, batch: int = 13, width: int = 9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, width + 1, (batch,), generator=g)
    lengths[3] = 0  # an empty response: counted as no sequence, contributes nothing
    mask = torch.arange(width)[None, :] < lengths[:, None]
    mask[5, 1] = False  # the loss does not need prefix masks (multi-turn masking of tool output)
    old = -torch.rand(batch, width, generator=g, dtype=torch.float64) * 2
    logprobs = old + 0.3 * torch.randn(batch, width, generator=g, dtype=torch.float64)
    return dict(
        logprobs=logprobs,
        old=old,
        adv=torch.randn(batch, width, generator=g, dtype=torch.float64),
        mask=mask,
        ref=old + 0.2 * torch.randn(batch, width, generator=g, dtype=torch.float64),
        engine=old + 0.3 * torch.randn(batch, width, generator=g, dtype=torch.float64),
        entropy=torch.rand(batch, width, generator=g, dtype=torch.float64) * 3,
    )


def textbook(values: torch.Tensor, mask: torch.Tensor, loss_agg: str) -> torch.Tensor:
    """The aggregate over the whole batch, written directly (boolean indexing, per-row Python)."""
    rows = [values[i][mask[i]] for i in range(values.shape[0]) if mask[i].any()]
    if loss_agg == "token_mean":
        return values[mask].mean()
    if loss_agg == "seq_mean_token_mean":
        return torch.stack([r.mean() for r in rows]).mean()
    return torch.stack([r.sum() / NORM_LEN for r in rows]).mean()


@pytest.mark.parametrize("loss_agg", LOSS_AGG_MODES)
def test_aggregate_equals_textbook_formula(loss_agg):
    b = random_batch(0)
    tokens, seqs = local_counts(b["mask"])
    assert int(tokens) == int(b["mask"].sum()) and int(seqs) == int(b["mask"].any(dim=1).sum())
    got = aggregate(b["adv"], b["mask"], loss_agg=loss_agg, global_num_tokens=tokens, global_num_seqs=seqs,
                    norm_len=NORM_LEN)
    torch.testing.assert_close(got, textbook(b["adv"], b["mask"], loss_agg), rtol=1e-12, atol=1e-14)


# rows of each rank, then that rank's uneven micro-batches (as slices of its rows)
RANKS = [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
MICRO = [[slice(0, 1), slice(1, 5), slice(5, 7)], [slice(0, 3), slice(3, 4), slice(4, 6)]]


def loss_kwargs(loss_agg):
    return dict(loss_agg=loss_agg, norm_len=NORM_LEN, eps_low=0.2, eps_high=0.28, dual_clip_c=3.0, kl_coef=0.05,
                kl_estimator="k3", entropy_coef=0.01, tis_cap=2.0)


def run(b, rows, logprobs, entropy, counts, loss_agg):
    return ppo_policy_loss(logprobs[rows], b["old"][rows], b["adv"][rows], b["mask"][rows],
                           global_num_tokens=counts[0], global_num_seqs=counts[1], ref_logprobs=b["ref"][rows],
                           entropy=entropy[rows], engine_logprobs=b["engine"][rows], **loss_kwargs(loss_agg))


@pytest.mark.parametrize("loss_agg", LOSS_AGG_MODES)
def test_micro_batches_and_ranks_sum_to_the_big_batch(loss_agg):
    b = random_batch(1)
    everything = torch.arange(b["mask"].shape[0])

    logprobs = b["logprobs"].clone().requires_grad_()
    entropy = b["entropy"].clone().requires_grad_()
    big_loss, big_metrics = run(b, everything, logprobs, entropy, local_counts(b["mask"]), loss_agg)
    big_loss.backward()
    big_grads = logprobs.grad.clone(), entropy.grad.clone()

    # global counts: local counts summed over micro-batches, then over ranks (the all-reduce)
    pieces = [torch.tensor(RANKS[r])[m] for r in range(len(RANKS)) for m in MICRO[r]]
    assert sorted(torch.cat(pieces).tolist()) == everything.tolist()
    counts = [sum(c) for c in zip(*(local_counts(b["mask"][rows]) for rows in pieces))]

    logprobs = b["logprobs"].clone().requires_grad_()
    entropy = b["entropy"].clone().requires_grad_()
    total, metric_sums = 0.0, {}
    for rows in pieces:
        loss, metrics = run(b, rows, logprobs, entropy, counts, loss_agg)
        loss.backward()  # gradients accumulate, as over micro-batches; the 'ranks' sum like an all-reduce SUM
        total = total + loss.detach()
        for k, v in metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + v

    torch.testing.assert_close(total, big_loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(logprobs.grad, big_grads[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(entropy.grad, big_grads[1], rtol=1e-12, atol=1e-14)
    assert set(metric_sums) == set(big_metrics)
    for k in big_metrics:
        torch.testing.assert_close(metric_sums[k], big_metrics[k], rtol=1e-12, atol=1e-14, msg=k)
    assert float(big_metrics["ppo/clipfrac"]) > 0  # the clip path was exercised, not just the linear one


@pytest.mark.parametrize("loss_agg", LOSS_AGG_MODES)
def test_local_normalisation_would_break_invariance(loss_agg):
    """The invariance test can fail: per-micro-batch counts give a different loss."""
    b = random_batch(2)
    full = aggregate(b["adv"], b["mask"], loss_agg=loss_agg, global_num_tokens=local_counts(b["mask"])[0],
                     global_num_seqs=local_counts(b["mask"])[1], norm_len=NORM_LEN)
    local = sum(aggregate(b["adv"][s], b["mask"][s], loss_agg=loss_agg, global_num_tokens=local_counts(b["mask"][s])[0],
                          global_num_seqs=local_counts(b["mask"][s])[1], norm_len=NORM_LEN)
                for s in (slice(0, 2), slice(2, 13)))
    assert not torch.allclose(local, full)


def test_policy_big_batch_loss_matches_textbook_per_token_formula():
    b = random_batch(3)
    counts = local_counts(b["mask"])
    loss, _ = ppo_policy_loss(b["logprobs"], b["old"], b["adv"], b["mask"], global_num_tokens=counts[0],
                              global_num_seqs=counts[1], loss_agg="seq_mean_token_mean", eps_low=0.2, eps_high=0.28)
    ratio = (b["logprobs"] - b["old"]).exp()
    per_token = torch.maximum(-b["adv"] * ratio, -b["adv"] * ratio.clamp(0.8, 1.28))
    torch.testing.assert_close(loss, textbook(per_token, b["mask"], "seq_mean_token_mean"), rtol=1e-12, atol=1e-14)


def test_counts_as_tensors_and_bad_counts():
    b = random_batch(4)
    tokens, seqs = local_counts(b["mask"])
    as_tensor = aggregate(b["adv"], b["mask"], loss_agg="seq_mean_token_mean", global_num_seqs=seqs)
    as_number = aggregate(b["adv"], b["mask"], loss_agg="seq_mean_token_mean", global_num_seqs=int(seqs))
    torch.testing.assert_close(as_tensor, as_number)
    with pytest.raises(ValueError, match="global_num_tokens must be a single number"):
        aggregate(b["adv"], b["mask"], loss_agg="token_mean", global_num_tokens=torch.ones(2))
    with pytest.raises(ValueError, match="global_num_tokens must be a positive number"):
        aggregate(b["adv"], b["mask"], loss_agg="token_mean", global_num_tokens="many")
