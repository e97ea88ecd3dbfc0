"""Broadcast transport for CUDA clusters: trainer rank 0 sends each tensor to the engine workers over a
process group of its own (NCCL on GPUs; gloo works the same way and is what the CPU test uses).

The group is separate from the trainer's default group (its own TCP rendezvous, store prefix and name), the
way SGLang's `/init_weights_update_group` builds it on the engine side, so both ends agree: the trainer is
rank 0, engine worker ranks start at `rank_offset`. Per bucket, the receiver is told names, dtypes and
shapes (SGLang: `/update_weights_from_distributed`), then every tensor is broadcast from rank 0 in order.

Delta (rollout.weight_sync_delta): the buckets carry only the changed tensors (`DeltaSender.select`), and
the sync's manifest follows the last bucket (`send_all(..., delta=sender)`); a receiver that keeps a
`DeltaReceiver` takes both with `receive_delta` and refuses a delta that does not apply on what it holds.
The sender commits only once every receiver has acknowledged (the caller's `wait`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from spro_mcore.parallel import collectives
from spro_mcore.rollout.weight_sync_delta import DeltaReceiver, DeltaSender, Manifest


@dataclass(frozen=True)
class BucketMeta:
    """What a receiver allocates before the broadcasts of one bucket (SGLang's request fields)."""

    names: list[str]
    dtypes: list[str]  # torch dtype names without the "torch." prefix ("bfloat16")
    shapes: list[list[int]]

    @classmethod
    def of(cls, bucket: list[tuple[str, torch.Tensor]]) -> "BucketMeta":
        return cls([n for n, _ in bucket], [str(t.dtype).removeprefix("torch.") for _, t in bucket],
                   [list(t.shape) for _, t in bucket])

    def as_json(self) -> dict:
        return {"names": self.names, "dtypes": self.dtypes, "shapes": self.shapes}


def init_broadcast_group(master_address: str, master_port: int, rank: int, world_size: int,
                         group_name: str = "weight_update_group", backend: str = "nccl",
                         timeout: timedelta = timedelta(minutes=10)) -> dist.ProcessGroup:
    """Join a new process group outside the default one (which may not exist or may be the trainer's)."""
    from torch.distributed.distributed_c10d import (
        Backend, PrefixStore, _new_process_group_helper, _world, rendezvous,
    )

    store, rank, world_size = next(rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size,
                                              timeout=timeout))
    store.set_timeout(timeout)
    options = "backend_options" if "backend_options" in inspect.signature(_new_process_group_helper).parameters \
        else "pg_options"  # renamed in torch 2.6
    group, _ = _new_process_group_helper(world_size, rank, [], Backend(backend), PrefixStore(group_name, store),
                                         group_name=group_name, timeout=timeout, **{options: None})
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def broadcast_bucket(group: dist.ProcessGroup, bucket: list[tuple[str, torch.Tensor]]) -> None:
    """Rank 0's side: every tensor of the bucket, in order (tensors must be on the group's device)."""
    for _, tensor in bucket:
        collectives.broadcast(tensor, 0, group)


def receive_bucket(group: dist.ProcessGroup, meta: BucketMeta, device: torch.device | str = "cpu"
                   ) -> list[tuple[str, torch.Tensor]]:
    """An engine worker's side (what SGLang does): allocate from the metadata, receive in the same order."""
    out = []
    for name, dtype, shape in zip(meta.names, meta.dtypes, meta.shapes):
        tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        collectives.broadcast(tensor, 0, group)
        out.append((name, tensor))
    return out


def destroy_group(group: dist.ProcessGroup) -> None:
    dist.destroy_process_group(group)


def send_all(group: dist.ProcessGroup, buckets: Iterable[list[tuple[str, torch.Tensor]]], announce,
             delta: Optional[DeltaSender] = None) -> None:
    """For each bucket: `announce(BucketMeta)` (starts the receivers, e.g. an HTTP call in a thread, and
    returns a callable that waits for them), broadcast, then wait. With `delta` (whose `select` made the
    buckets), the manifest follows; the caller commits the sender once the receivers have applied it."""
    for bucket in buckets:
        wait = announce(BucketMeta.of(bucket))
        broadcast_bucket(group, bucket)
        wait()
    if delta is not None:
        send_manifest(group, delta.manifest())


def send_manifest(group: dist.ProcessGroup, manifest: Manifest) -> None:
    collectives.broadcast_object(manifest.to_json(), 0, group)


def receive_delta(group: dist.ProcessGroup, metas: Iterable[BucketMeta], receiver: DeltaReceiver,
                  device: torch.device | str = "cpu") -> tuple[Manifest, dict[str, torch.Tensor]]:
    """A receiver's side of one delta sync: the announced buckets, then the manifest, checked against what
    `receiver` holds (DeltaError if it does not apply). The caller applies the tensors, then
    `receiver.commit(manifest)`."""
    received: dict[str, torch.Tensor] = {}
    for meta in metas:
        received.update(receive_bucket(group, meta, device))
    manifest = Manifest.from_json(collectives.broadcast_object(None, 0, group))
    receiver.check(manifest, received)
    return manifest, received
