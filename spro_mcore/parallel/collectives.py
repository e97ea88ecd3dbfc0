"""Every torch.distributed collective the project issues, in one place, on the right device.

NCCL only takes CUDA tensors and gloo only CPU ones; a tensor may live on either (the rollout batch is built on
CPU, the model's log-probs come out on the GPU). Each helper here moves its tensor to the communication device
of the group's backend, runs the collective, and puts the result back where the caller's tensor was, so no
caller has to know the backend. A test (tests/parallel/test_collectives.py) fails if any module outside this one
calls a torch.distributed collective directly.

Groups are named, not passed around: "world", "tp", "pp", "dp" (data-parallel), "mp" (model-parallel: the
TP x PP ranks of one data-parallel replica); a process group object is accepted too (e.g. an engine's own
NCCL group). Collectives on a group of one process return at once.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.distributed as dist

Group = Union[str, None, "dist.ProcessGroup"]


def process_group(group: Group):
    """The torch ProcessGroup for a name ("world" | "tp" | "pp" | "dp" | "mp") or a group object."""
    if group is None or group == "world":
        return None  # torch's default group
    if not isinstance(group, str):
        return group
    from megatron.core import parallel_state as mpu

    getters = {"tp": mpu.get_tensor_model_parallel_group, "pp": mpu.get_pipeline_model_parallel_group,
               "dp": mpu.get_data_parallel_group, "mp": mpu.get_model_parallel_group}
    if group not in getters:
        raise ValueError(f"unknown process group name {group!r} (world, tp, pp, dp, mp)")
    return getters[group]()


def size(group: Group = "world") -> int:
    if (group is None or isinstance(group, str)) and not dist.is_initialized():
        return 1  # no job-wide group (a plain process); a group object (e.g. an engine's own) has its size
    return dist.get_world_size(process_group(group))


def comm_device(group: Group = "world") -> torch.device:
    """Where a tensor must live for this group's backend: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(process_group(group)) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_rank(group: Group, group_rank: int) -> int:
    """The global rank of `group_rank` within `group`."""
    pg = process_group(group)
    return group_rank if pg is None else dist.get_global_rank(pg, group_rank)


def _on_comm_device(t: torch.Tensor, group: Group) -> torch.Tensor:
    dev = comm_device(group)
    return t if t.device == dev else t.to(dev)


def all_reduce(t: torch.Tensor, op: str = "sum", group: Group = "world") -> torch.Tensor:
    """In place (the caller's tensor holds the result, on its own device); returns it."""
    if size(group) == 1:
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    work = _on_comm_device(t, group)
    dist.all_reduce(work, op=ops[op], group=process_group(group))
    if work is not t:
        t.copy_(work)
    return t


def broadcast(t: torch.Tensor, src_group_rank: int = 0, group: Group = "world") -> torch.Tensor:
    """In place from the group's rank `src_group_rank`; returns the caller's tensor."""
    if size(group) == 1:
        return t
    work = _on_comm_device(t, group)
    dist.broadcast(work, src=global_rank(group, src_group_rank), group=process_group(group))
    if work is not t:
        t.copy_(work)
    return t


def all_gather(t: torch.Tensor, group: Group = "world") -> list[torch.Tensor]:
    """Every rank's tensor of the same shape, in group-rank order, on the caller's device."""
    n = size(group)
    if n == 1:
        return [t]
    work = _on_comm_device(t.contiguous(), group)
    parts = [torch.empty_like(work) for _ in range(n)]
    dist.all_gather(parts, work, group=process_group(group))
    return [p.to(t.device) for p in parts]


def broadcast_object(obj: Any, src_group_rank: int = 0, group: Group = "world") -> Any:
    """A picklable object from one rank of the group to all of them (tensors inside travel pickled)."""
    if size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=global_rank(group, src_group_rank), group=process_group(group),
                               device=comm_device(group))
    return box[0]


def all_gather_object(obj: Any, group: Group = "world") -> list:
    """Every rank's picklable object, in group-rank order."""
    n = size(group)
    if n == 1:
        return [obj]
    out = [None] * n
    dist.all_gather_object(out, obj, group=process_group(group))
    return out


def any_rank(flag: bool, group: Group = "world") -> bool:
    """True on every rank if it is True on any."""
    t = torch.tensor([1.0 if flag else 0.0])
    return bool(all_reduce(t, "max", group).item())


def barrier(group: Group = "world") -> None:
    if size(group) > 1:
        pg = process_group(group)
        if dist.get_backend(pg) == "nccl":
            dist.barrier(group=pg, device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier(group=pg)
