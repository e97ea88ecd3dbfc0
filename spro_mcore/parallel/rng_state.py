"""The random-number state of one rank (Python, NumPy, torch CPU/CUDA, Megatron's model-parallel tracker):
captured into a checkpoint and restored on resume, so a resumed run draws the same numbers as an
uninterrupted one. States belong to a rank's place in the TP/PP/DP grid; with a different layout they
cannot be mapped and the run is re-seeded instead (deterministically, from the seed and the step)."""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict:
    from megatron.core import tensor_parallel

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": {k: v.clone() for k, v in tensor_parallel.get_cuda_rng_tracker().get_states().items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def reseed(seed: int, step: int) -> None:
    """Fresh, deterministic streams for a resume into another layout (not those of an uninterrupted run)."""
    from spro_mcore.parallel.distributed import seed_everything

    seed_everything(seed + 1_000_003 * step)
