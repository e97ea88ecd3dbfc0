"""The broadcast transport in two real processes over gloo (NCCL's stand-in on CPU: the code path is the same
torch.distributed one): rank 0 streams buckets of mixed-dtype tensors to rank 1 over a group of its own,
created next to an existing default group, and rank 1 rebuilds every tensor bit for bit from the metadata."""

from __future__ import annotations

import pytest
import torch

from spro_mcore.parallel.distributed import free_port
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.dist


def _weights() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(f"model.layers.{i}.w", torch.randn(17 + i, 9, generator=g).to(dtype))
            for i, dtype in enumerate([torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.bfloat16])]


def _run(port: int) -> float:
    import torch.distributed as dist

    from spro_mcore.rollout import weight_sync_nccl as nccl
    from spro_mcore.rollout.weight_sync import iter_buckets

    dist.init_process_group("gloo")  # the trainer's own default group stays untouched
    rank = dist.get_rank()
    group = nccl.init_broadcast_group("127.0.0.1", port, rank, 2, group_name="test_sync", backend="gloo")
    buckets = list(iter_buckets(_weights(), bucket_bytes=1200))
    assert len(buckets) > 2
    worst = 0.0
    if rank == 0:
        nccl.send_all(group, buckets, announce=lambda meta: (lambda: None))
    else:
        for bucket in buckets:
            got = nccl.receive_bucket(group, nccl.BucketMeta.of(bucket))
            for (name, want), (got_name, t) in zip(bucket, got):
                assert got_name == name and t.dtype == want.dtype and t.shape == want.shape
                worst = max(worst, (t.float() - want.float()).abs().max().item())
    dist.barrier()  # the default group still works
    nccl.destroy_group(group)
    return worst


def test_buckets_arrive_bit_for_bit():
    assert run_in_processes(_run, 2, free_port(), timeout=120) == [0.0, 0.0]
