"""`score(model_dir, input_ids)`: log-probs of a token sequence under a Megatron model loaded from an HF
directory or a spro-mcore Megatron checkpoint, in the current process group (a group of one is created when
none exists; otherwise the current TP/PP layout is used and every rank of it must call score)."""

from __future__ import annotations

from typing import Optional

import torch

from spro_mcore.config.schema import ModelConfig


def score(model_dir: str, input_ids: torch.Tensor, *, temperature: float = 1.0,
          model_cfg: Optional[ModelConfig] = None, micro_batch_size: Optional[int] = None) -> torch.Tensor:
    """[B, L-1] float32: log p(input_ids[:, t] | input_ids[:, :t]) for t = 1..L-1 at `temperature`."""
    from megatron.core import parallel_state as mpu

    from spro_mcore.models.loader import load_model
    from spro_mcore.models.logprobs import sequence_logprobs
    from spro_mcore.parallel import initialize_model_parallel

    input_ids = torch.as_tensor(input_ids).long()
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [B, L] with L >= 2, got shape {tuple(input_ids.shape)}")
    if not mpu.model_parallel_is_initialized():
        initialize_model_parallel(1, 1)
    chunks, arch = load_model(model_dir, model_cfg)
    b, length = input_ids.shape
    cfg = model_cfg or ModelConfig()
    lp, _ = sequence_logprobs(
        chunks, input_ids, torch.ones(b, dtype=torch.long), torch.full((b,), length - 1, dtype=torch.long),
        temperature=temperature, micro_batch_size=micro_batch_size, chunk_tokens=cfg.logprob_chunk_tokens)
    return lp
