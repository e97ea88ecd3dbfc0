"""Vocab-parallel log-probs and entropy of target tokens from final hidden states, in chunks of tokens.

For N tokens with hidden states h [N, H], this TP rank's output-projection rows W [V/tp, H] and targets [N]:

    z = h W^T / temperature          (one chunk of tokens at a time: [chunk, V/tp] fp32, freed before the next)
    logp[n]    = z[n, target] - logsumexp_v z[n, v]
    entropy[n] = logsumexp_v z[n, v] - sum_v softmax(z)[n, v] z[n, v]

The max, sum-exp, target logit and sum p*z are all-reduced over the TP group (two small collectives per
chunk), so no rank ever holds full-vocabulary logits and peak memory is O(chunk x V/tp), not O(N x V).
Padded vocabulary rows (beyond the real vocab) are excluded. The backward recomputes each chunk's logits
(only [N] statistics are saved) and accumulates dW in fp32, so training does not hold [N, V] either:

    d logp / dz    = onehot(target) - p
    d entropy / dz = -p (z - E_p[z])

One exception, on one CPU rank: when a micro-batch's whole log-softmax fits in `KEEP_LOGITS_BYTES` (small
vocabularies: the tests, the quickstart), it is kept for the backward instead of recomputed; the recompute
GEMM is then the largest cost of the head (~5 ms of a 2k-token pass of the bench's tiny Qwen2).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from spro_mcore.parallel import collectives

# below this many bytes of [N, V] fp32 log-softmax, one CPU rank keeps it for the backward (see above)
KEEP_LOGITS_BYTES = 32 * 2**20


def _all_reduce(t: torch.Tensor, op: str, group) -> torch.Tensor:
    return t if group is None else collectives.all_reduce(t, op, group)


class _ChunkedLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_start, valid_rows, temperature, chunk, with_entropy, group,
                for_backward):
        n = hidden.shape[0]
        w = weight[:valid_rows]
        logp = hidden.new_empty(n, dtype=torch.float32)
        lse_all = torch.empty_like(logp)
        ez_all = torch.empty_like(logp) if with_entropy else None
        # the whole vocabulary on this rank (one rank, CPU): a fused log_softmax per chunk, in place (no second
        # [chunk, V] buffer), instead of separate max, sub, exp and sum passes; the same log-prob arithmetic
        # with and without entropy (the policy's and the reference's passes agree exactly). The backward's
        # statistics follow: logsumexp = target logit - log-prob, E_p[z] = logsumexp - entropy. CPU only: the
        # in-place log_softmax is checked there (tests); elsewhere the general path below, as before.
        whole = (group is None and vocab_start == 0 and hidden.device.type == "cpu"
                 and (n == 0 or int(targets.max()) < valid_rows))
        # the same chunks as the no-grad passes (a GEMM's rows may round differently with another row count:
        # the first update's PPO ratio stays exactly 1)
        kept = [] if for_backward and whole and n * valid_rows * 4 <= KEEP_LOGITS_BYTES else None
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            z = _logits(hidden[lo:hi], w, temperature)
            if whole:
                t = targets[lo:hi, None]
                zt = z.gather(1, t).squeeze(1)
                logsm = torch.log_softmax(z, -1, out=z)
                if kept is not None:
                    kept.append(logsm)
                logp[lo:hi] = logsm.gather(1, t).squeeze(1)
                torch.sub(zt, logp[lo:hi], out=lse_all[lo:hi])
                if with_entropy:  # -sum p log p without a [chunk, V] product temporary
                    ent = torch.bmm(logsm.exp().unsqueeze(1), logsm.unsqueeze(2)).view(-1).neg_()
                    torch.sub(lse_all[lo:hi], ent, out=ez_all[lo:hi])
                continue
            local_t = targets[lo:hi] - vocab_start
            inside = (local_t >= 0) & (local_t < valid_rows)
            rows = inside.nonzero().squeeze(-1)
            m = torch.amax(z, -1) if valid_rows > 0 else z.new_full((hi - lo,), float("-inf"))
            _all_reduce(m, "max", group)
            stats = z.new_zeros(3 if with_entropy else 2, hi - lo)
            stats[1, rows] = z[rows, local_t[rows]]
            if with_entropy:
                e = z - m[:, None]
                e.exp_()
                stats[0] = e.sum(-1)
                stats[2] = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1)  # sum e*z without an [n, V] temp
                del e
            else:
                z.sub_(m[:, None]).exp_()
                stats[0] = z.sum(-1)
            del z
            _all_reduce(stats, "sum", group)
            lse = m + stats[0].log()
            lse_all[lo:hi] = lse
            logp[lo:hi] = stats[1] - lse
            if with_entropy:
                ez_all[lo:hi] = stats[2] / stats[0]
        entropy = lse_all - ez_all if with_entropy else logp.new_empty(0)
        ctx.save_for_backward(hidden, weight, targets, lse_all, ez_all if with_entropy else lse_all.new_empty(0))
        ctx.kept = kept  # intermediates, not inputs or outputs: a ctx attribute
        ctx.args = (vocab_start, valid_rows, temperature, chunk, with_entropy)
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse_all, ez_all = ctx.saved_tensors
        kept, ctx.kept = ctx.kept, None
        vocab_start, valid_rows, temperature, chunk, with_entropy = ctx.args
        use_ent = with_entropy and g_ent is not None
        n = hidden.shape[0]
        if g_logp is None:
            g_logp = lse_all.new_zeros(n)
        w = weight[:valid_rows]
        g_hidden = torch.empty_like(hidden)  # every row is written below
        g_w32 = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            h = hidden[lo:hi]
            if kept is not None:  # z = log-softmax + logsumexp, without the GEMM; p in the kept buffer
                logsm = kept[lo // chunk]
                z = logsm + lse_all[lo:hi, None] if use_ent else None
                p = logsm.exp_()
            else:
                z = _logits(h, w, temperature)
                p = z - lse_all[lo:hi, None]
                p.exp_()
            gl = g_logp[lo:hi, None].float()
            if use_ent:  # g_z = -p * (g_logp + g_ent * (z - E[z]))
                z.sub_(ez_all[lo:hi, None]).mul_(g_ent[lo:hi, None].float()).add_(gl).mul_(p).neg_()
                g_z = z
            else:
                g_z = p.mul_(-gl)  # = -(p * gl) exactly
                del z
            local_t = targets[lo:hi] - vocab_start
            rows = ((local_t >= 0) & (local_t < valid_rows)).nonzero().squeeze(-1)
            g_z[rows, local_t[rows]] += gl[rows, 0]
            if temperature != 1.0:
                g_z.div_(temperature)
            if w.dtype == hidden.dtype == g_z.dtype:
                torch.mm(g_z, w, out=g_hidden[lo:hi])
            else:
                g_hidden[lo:hi] = (g_z.to(w.dtype) @ w).to(hidden.dtype)
            g_w32.addmm_(g_z.t(), h.float())
            del g_z, p
        g_weight = torch.zeros_like(weight)
        g_weight[:valid_rows] = g_w32.to(weight.dtype)
        return g_hidden, g_weight, None, None, None, None, None, None, None, None


def _logits(h: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
    z = (h.to(w.dtype) @ w.t()).float()
    if temperature != 1.0:
        z.div_(temperature)
    return z


def vocab_parallel_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, vocab_size: int,
                            temperature: float = 1.0, chunk_tokens: int = 1024, with_entropy: bool = False,
                            tp_group=None, tp_rank: int = 0, sequence_parallel: bool = False,
                            ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(logp [N], entropy [N] | None) in fp32 for hidden [N, H] (replicated over TP), this rank's output rows
    `weight` [V_padded/tp, H] (rows tp_rank*V_padded/tp ...), global target ids [N] < vocab_size.

    Differentiable in hidden and weight. The hidden-state gradient is all-reduced over the TP group by
    megatron's copy_to_tensor_model_parallel_region, as in ColumnParallelLinear. With sequence parallelism,
    pass the already sequence-gathered hidden states and `sequence_parallel=True`: the caller's
    gather_from_sequence_parallel_region then reduce-scatters the gradient instead.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab_size):
        raise ValueError(f"target token ids must lie in [0, {vocab_size}): got [{int(targets.min())}, "
                         f"{int(targets.max())}]")
    rows_per_rank = weight.shape[0]
    vocab_start = tp_rank * rows_per_rank
    valid_rows = max(0, min(rows_per_rank, vocab_size - vocab_start))
    tp = dist.get_world_size(tp_group) if tp_group is not None else 1
    if tp > 1 and not sequence_parallel and torch.is_grad_enabled():
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        hidden = copy_to_tensor_model_parallel_region(hidden, group=tp_group)
    logp, ent = _ChunkedLogprob.apply(hidden, weight, targets, vocab_start, valid_rows, float(temperature),
                                      max(1, int(chunk_tokens)), bool(with_entropy), tp_group if tp > 1 else None,
                                      torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad))
    return logp, (ent if with_entropy else None)


def reference_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, vocab_size: int,
                       temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive full-logits path on one rank ([N, V] fp32 logits + log_softmax): the test/benchmark baseline."""
    logits = (hidden.to(weight.dtype) @ weight[:vocab_size].t()).float() / temperature
    logsm = torch.log_softmax(logits, -1)
    logp = logsm.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy
