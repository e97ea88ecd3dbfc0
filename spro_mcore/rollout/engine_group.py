"""Engines on every rank of a model-parallel group (colocated vLLM in a torchrun job): who generates what.

A data-parallel replica's model-parallel group (its TP x PP ranks) gets the replica's prompts. With one
engine per `engine_tp` consecutive ranks (vLLM's external-launcher layout), the group holds
`group_size / engine_tp` engines. `EngineGroup` wraps this rank's engine and makes the group act as one:

- `generate` is COLLECTIVE over the group: every rank calls it with the same prompts. Engine k takes the
  k-th contiguous share of the prompts (shares differ by at most one prompt), with the seeds the whole list
  would give them (sample j of prompt i keeps seed `seed + i * n + j`), so the result does not depend on how
  many engines share the work. All ranks of one engine compute the same share (vLLM's external launcher
  needs that). The shares are gathered; the group's first rank (the one that scores and builds the batch,
  `Trainer._share_batch`) gets every group in prompt order, the other ranks get None.
- `update_weights` is COLLECTIVE too: every rank loads the full tensors into its engine (vLLM's workers keep
  their own TP shard). A rank whose engine fails still drains the stream (the export is collective).
- A failure of any engine (generate or update) is raised as the same `EngineError` on every rank of the
  group, so no rank is left waiting in a collective.
- `sleep` / `wake` / `close` act on this rank's engine.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from spro_mcore.parallel import collectives
from spro_mcore.rollout.engine import Engine, EngineError, Sample, SamplingParams
from spro_mcore.rollout.weight_sync import SyncStats


def engine_layout(group_ranks: list[int], rank: int, engine_tp: int) -> tuple[int, int]:
    """(number of engines in the group, index of this rank's engine) for engines of `engine_tp` consecutive
    global ranks; every engine must lie inside the group."""
    if engine_tp < 1:
        raise EngineError(f"rollout.engine_tp={engine_tp} must be >= 1")
    engines = sorted({r // engine_tp for r in group_ranks})
    members = set(group_ranks)
    outside = [e for e in engines if not all(e * engine_tp + i in members for i in range(engine_tp))]
    if outside:
        raise EngineError(f"rollout.engine_tp={engine_tp}: an engine of ranks {outside[0] * engine_tp}.."
                          f"{outside[0] * engine_tp + engine_tp - 1} would span model-parallel groups "
                          f"(this group: ranks {sorted(group_ranks)}); engine_tp must divide parallel.tp")
    return len(engines), engines.index(rank // engine_tp)


def shares(n_items: int, n_parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) shares of n_items over n_parts, sizes differing by at most one."""
    base, extra = divmod(n_items, n_parts)
    out, start = [], 0
    for k in range(n_parts):
        end = start + base + (1 if k < extra else 0)
        out.append((start, end))
        start = end
    return out


class EngineGroup(Engine):
    def __init__(self, engine: Engine, group, engine_tp: int):
        """`engine`: this rank's engine; `group`: the model-parallel process group (None = the whole world)."""
        self.engine, self.group = engine, group
        ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
        self.n_engines, self.index = engine_layout(ranks, dist.get_rank(), engine_tp)
        self.group_rank = dist.get_rank(group)
        self.last_share: tuple[int, int] = (0, 0)  # the prompts this rank's engine generated in the last call

    def _all_gather(self, obj) -> list:
        return collectives.all_gather_object(obj, group=self.group)

    def _raise_any(self, errors: list) -> None:
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            r, e = failed[0]
            raise EngineError(f"rollout engine on model-parallel rank {r} failed: {e}")

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams
                 ) -> Optional[list[list[Sample]]]:
        start, end = shares(len(prompt_token_ids), self.n_engines)[self.index]
        self.last_share = (start, end)
        local: object = []
        if end > start:
            seed = None if sampling.seed is None else sampling.seed + start * sampling.n
            try:
                local = self.engine.generate(prompt_token_ids[start:end], dataclasses.replace(sampling, seed=seed))
            except Exception as e:  # noqa: BLE001 - reported to the whole group below
                local = f"{type(e).__name__}: {e}"
        results = self._all_gather((self.index, local))
        self._raise_any([r if isinstance(r, str) else None for _, r in results])
        if self.group_rank != 0:
            return None
        per_engine = {}  # one result per engine (all its ranks computed the same share)
        for index, result in results:
            per_engine.setdefault(index, result)
        groups = [g for index in sorted(per_engine) for g in per_engine[index]]
        if len(groups) != len(prompt_token_ids):
            raise EngineError(f"engine group returned {len(groups)} groups for {len(prompt_token_ids)} prompts")
        return groups

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        stream = iter(named_tensors)
        stats, error = SyncStats(), None
        try:
            stats = self.engine.update_weights(stream)
        except Exception as e:  # noqa: BLE001 - reported to the whole group below
            error = f"{type(e).__name__}: {e}"
        for _ in stream:  # the export is collective: run it to the end even after a failure
            pass
        self._raise_any(self._all_gather(error))
        return stats

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def close(self) -> None:
        self.engine.close()
