"""torch.distributed and Megatron model-parallel groups from the torchrun environment.

Launched by torchrun, the RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* variables describe the job; launched as a
plain `python` process, a single-process group is created on a free local port. The backend is NCCL on
CUDA and gloo on CPU (where the megatron-core CPU compatibility layer is applied first).
"""

from __future__ import annotations

import datetime
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from spro_mcore.parallel.cpu_compat import apply_cpu_compat


@dataclass(frozen=True)
class Layout:
    """Where this process sits: its global rank and its coordinates in the TP/PP/DP grid."""

    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    cp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_process_group(timeout_minutes: int = 30) -> None:
    """Join (or create) the default process group. Idempotent."""
    apply_cpu_compat()
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if "RANK" not in os.environ:
        # plain `python`: a group of one on a free local port. The torchrun variables are NOT set in
        # os.environ: child processes (a torchrun, a subprocess) would inherit them and collide on the port.
        dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                world_size=1, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, timeout=timeout)


def initialize_model_parallel(tp: int = 1, pp: int = 1, cp: int = 1, ep: int = 1, vpp: int | None = None,
                              timeout_minutes: int = 30) -> Layout:
    """Process group + Megatron's TP/PP/CP/EP/DP groups. The world size must be a multiple of tp*pp*cp."""
    from megatron.core import parallel_state as mpu

    init_process_group(timeout_minutes)
    world = dist.get_world_size()
    if world % (tp * pp * cp) != 0:
        raise ValueError(f"world size {world} is not divisible by tp x pp x cp = {tp} x {pp} x {cp}")
    if mpu.model_parallel_is_initialized():
        if (mpu.get_tensor_model_parallel_world_size(), mpu.get_pipeline_model_parallel_world_size()) != (tp, pp):
            mpu.destroy_model_parallel()
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp,
            context_parallel_size=cp,
            expert_model_parallel_size=ep,
            distributed_timeout_minutes=timeout_minutes,
        )
    return layout()


def layout() -> Layout:
    from megatron.core import parallel_state as mpu

    return Layout(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        tp=mpu.get_tensor_model_parallel_world_size(),
        pp=mpu.get_pipeline_model_parallel_world_size(),
        dp=mpu.get_data_parallel_world_size(),
        cp=mpu.get_context_parallel_world_size(),
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        pp_rank=mpu.get_pipeline_model_parallel_rank(),
        dp_rank=mpu.get_data_parallel_rank(),
    )


def seed_everything(seed: int) -> None:
    """Python, NumPy, torch and Megatron's model-parallel RNG tracker (TP ranks get distinct streams for
    dropout inside tensor-parallel regions; DP replicas share the default one)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy() -> None:
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
