"""Build this rank's model chunks and fill them from an HF directory or a spro-mcore Megatron checkpoint."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from spro_mcore.config.schema import ModelConfig
from spro_mcore.models.build import build_model_chunks
from spro_mcore.models.hf_arch import HFArch, parse_hf_config
from spro_mcore.models.hf_checkpoint import CheckpointError
from spro_mcore.models.load_hf import load_hf_weights
from spro_mcore.models.mcore_checkpoint import is_mcore_checkpoint, load_mcore_checkpoint, read_metadata


def model_arch(path: str) -> HFArch:
    """The architecture of an HF directory or a Megatron checkpoint written by spro-mcore."""
    if not os.path.isdir(path):
        raise CheckpointError(f"model path {path!r} does not exist (expected an HF directory or a Megatron checkpoint)")
    if is_mcore_checkpoint(path):
        return parse_hf_config(read_metadata(path)["hf_config"])
    return parse_hf_config(path)


def load_model(path: str, model_cfg: Optional[ModelConfig] = None, *, sequence_parallel: bool = False):
    """(chunks, arch): this rank's GPTModel chunks for the current TP/PP(/VPP) layout with the weights of
    `path` (an HF safetensors directory or a Megatron dist checkpoint). Collective over the job."""
    model_cfg = model_cfg or ModelConfig()
    arch = model_arch(path)
    chunks = build_model_chunks(arch, model_cfg, sequence_parallel=sequence_parallel)
    if is_mcore_checkpoint(path):
        load_mcore_checkpoint(chunks, path)
    else:
        load_hf_weights(chunks, path, arch)
    return chunks, arch


def with_dtype(model_cfg: Optional[ModelConfig], dtype: str) -> ModelConfig:
    return dataclasses.replace(model_cfg or ModelConfig(), dtype=dtype)
