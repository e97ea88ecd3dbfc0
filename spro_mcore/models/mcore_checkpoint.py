"""Megatron dist checkpoints of the model, self-describing: megatron.core.dist_checkpointing's files plus
`spro_mcore_model.json` (the HF config, architecture, dtype and the padded vocab), so that a checkpoint
written at one TP/PP loads at another (dist_checkpointing reshards) and can be rebuilt without the HF dir.

Both functions are collective over the whole job. Scripts that save need an `if __name__ == "__main__":`
guard (the writer spawns a process that re-imports __main__).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from spro_mcore.models.hf_checkpoint import CheckpointError
from spro_mcore.models.unwrap import as_list, unwrap
from spro_mcore.parallel import collectives

METADATA = "spro_mcore_model.json"
FORMAT = "spro-mcore/megatron-dist-checkpoint"


def is_mcore_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, METADATA))


def _sharded_state_dict(models) -> dict:
    chunks = [unwrap(m) for m in as_list(models)]
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def save_mcore_checkpoint(models, out_dir: str, extra_metadata: dict | None = None) -> None:
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as mpu

    chunk = unwrap(as_list(models)[0])
    arch = chunk.hf_arch
    if dist.get_rank() == 0:
        os.makedirs(out_dir, exist_ok=True)
        if os.listdir(out_dir):
            raise CheckpointError(f"output directory {out_dir!r} is not empty")
    collectives.barrier()
    dist_checkpointing.save(_sharded_state_dict(models), out_dir)
    if dist.get_rank() == 0:
        meta = {
            "format": FORMAT, "version": 1, "architecture": (arch.config.get("architectures") or [arch.family])[0],
            "model_type": arch.family, "dtype": str(chunk.config.params_dtype).replace("torch.", ""),
            "padded_vocab_size": chunk.vocab_size, "vocab_size": arch.vocab_size,
            "saved_with": {"tp": mpu.get_tensor_model_parallel_world_size(),
                           "pp": mpu.get_pipeline_model_parallel_world_size()},
            "hf_config": dict(arch.config), **(extra_metadata or {}),
        }
        with open(os.path.join(out_dir, METADATA), "w") as f:
            json.dump(meta, f, indent=2)
    collectives.barrier()


def read_metadata(ckpt_dir: str) -> dict[str, Any]:
    path = os.path.join(ckpt_dir, METADATA)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"Megatron checkpoint directory {ckpt_dir!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"{ckpt_dir!r} is not a spro-mcore Megatron checkpoint (no {METADATA}; "
                              "write one with `spro-mcore convert hf-to-mcore`)")
    try:
        with open(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format')!r}")
    return meta


def _reason(e: BaseException) -> str:
    """One line: torch's CheckpointException (a BaseException) wraps per-rank failures with tracebacks."""
    failures = getattr(e, "failures", None)
    if failures:
        e = next(iter(failures.values()))
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def load_mcore_checkpoint(models, ckpt_dir: str) -> dict[str, Any]:
    """Load the dist checkpoint into `models` (this rank's chunks, any TP/PP). Returns the metadata."""
    from megatron.core import dist_checkpointing

    meta = read_metadata(ckpt_dir)
    chunks = [unwrap(m) for m in as_list(models)]
    if meta["padded_vocab_size"] != chunks[0].vocab_size:
        raise CheckpointError(
            f"{ckpt_dir}: checkpoint vocab is padded to {meta['padded_vocab_size']} but this TP layout pads to "
            f"{chunks[0].vocab_size}; use a TP size that divides {meta['padded_vocab_size']}")
    with torch.no_grad():
        try:
            state = dist_checkpointing.load(_sharded_state_dict(chunks), ckpt_dir)
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as e:  # missing/corrupt shard files, mismatched shapes
            raise CheckpointError(f"cannot load Megatron checkpoint {ckpt_dir!r}: {_reason(e)}") from e
        if len(chunks) == 1:
            chunks[0].load_state_dict(state["model"])
        else:
            for i, c in enumerate(chunks):
                c.load_state_dict(state[f"model{i}"])
    return meta
