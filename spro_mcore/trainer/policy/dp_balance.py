"""Token balance over data-parallel ranks for the packed Megatron passes (trainer.packing with dp > 1).

Each replica generates the rollout of its own prompts, so its row count is fixed but its token count is not
(RL lengths are skewed): with fixed row slices the slowest rank sets the step time. Here every rank gathers
the replicas' rows (`gather_replicas`), and for each global mini-batch (the union of the replicas' k-th row
slices, the same rows a fixed-slice run trains on) every rank computes the same deterministic token-balanced
assignment from the globally known lengths (`micro_batches.dp_balanced_micro_batches`), runs its share, and
the per-row results are summed back over the replicas (`scatter_rows`: each row is computed on exactly one
rank, zeros elsewhere, so the sum is exact).

Ranks may run different numbers of micro-batches: no collective runs per micro-batch across data-parallel
ranks (DDP's reduction runs once, in `finalize_model_grads`, and the loss is normalised by the mini-batch's
global counts), so unequal counts cannot deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spro_mcore.parallel import collectives
from spro_mcore.trainer.micro_batches import dp_balanced_micro_batches, dp_token_imbalance
from spro_mcore.trainer.rollout_batch import RolloutBatch


@dataclass
class Share:
    rows: list[int]  # global rows this rank computes, in pack order
    packs: list[list[int]]  # positions in `rows`, one group per packed micro-batch
    imbalance: float  # max / mean tokens over the ranks for this mini-batch (1.0 = balanced)


@dataclass
class ReplicaView:
    """Every replica's rows in rank order, padded to the longest prompt+response and response."""
    batch: RolloutBatch
    fields: dict[str, torch.Tensor]  # [G, T] per-row tensors that travel with the batch (update inputs)
    offsets: list[int]  # first global row of each replica
    sizes: list[int]  # rows of each replica
    rank: int  # this rank's data-parallel rank

    def mini_batch_rows(self, mini_batches: int) -> list[list[int]]:
        """Global rows of each mini-batch: the union of the replicas' k-th contiguous slices (split like
        `split_even`), i.e. what a fixed-slice run puts in its k-th optimizer step. Globally empty ones dropped."""
        out = []
        for k in range(mini_batches):
            rows = []
            for off, n in zip(self.offsets, self.sizes):
                base, extra = divmod(n, mini_batches)
                start = k * base + min(k, extra)
                rows += range(off + start, off + start + base + (1 if k < extra else 0))
            if rows:
                out.append(rows)
        return out

    def share(self, rows: list[int], max_tokens: int) -> Share:
        """This rank's token-balanced share of the mini-batch `rows` (the same computation on every rank)."""
        lengths = self.batch.total_lens[rows].tolist()
        per_rank = dp_balanced_micro_batches(lengths, len(self.sizes), max_tokens)
        mbs = [mb for mb in per_rank[self.rank] if mb]
        mine = [rows[i] for mb in mbs for i in mb]
        packs, pos = [], 0
        for mb in mbs:
            packs.append(list(range(pos, pos + len(mb))))
            pos += len(mb)
        return Share(mine, packs, dp_token_imbalance(lengths, per_rank))

    def scatter_rows(self, values: torch.Tensor, width: int) -> torch.Tensor:
        """[G, W] per-row results, each row filled on the one rank that computed it (zeros elsewhere) ->
        this replica's own rows [n, width] (summed over the replicas: exact, one non-zero term per entry)."""
        summed = collectives.all_reduce(values.clone(), "sum", group="dp")
        off = self.offsets[self.rank]
        return summed[off:off + self.sizes[self.rank], :width].cpu()


def gather_replicas(batch: RolloutBatch, fields: dict[str, torch.Tensor], rank: int) -> ReplicaView:
    """Collective over the data-parallel group: every replica's batch (and per-row `fields`), concatenated in
    rank order (identical on every rank)."""
    local = {k: v.cpu() for k, v in {**batch.to_dict(), **{"field." + k: v for k, v in fields.items()}}.items()
             if v is not None}
    parts = collectives.all_gather_object(local, group="dp")
    sizes = [int(p["input_ids"].shape[0]) for p in parts]
    offsets = [sum(sizes[:r]) for r in range(len(sizes))]
    merged = {}
    for k in parts[0]:
        width = max(p[k].shape[1] for p in parts) if parts[0][k].dim() == 2 else None
        merged[k] = torch.cat([_pad_cols(p[k], width) for p in parts])
    fields_out = {k[len("field."):]: merged.pop(k) for k in list(merged) if k.startswith("field.")}
    merged.setdefault("policy_version", None)
    return ReplicaView(RolloutBatch(**merged), fields_out, offsets, sizes, rank)


def _pad_cols(t: torch.Tensor, width: int | None) -> torch.Tensor:
    # padding beyond a row's lengths is never read by the packed path (packs copy each row's real tokens)
    if width is None or t.shape[1] == width:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], width - t.shape[1])], dim=1)
