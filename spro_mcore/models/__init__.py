"""Megatron models from HF checkpoints: building, the HF <-> Megatron weight mapping, conversion, and the
chunked vocab-parallel log-prob / entropy kernels.

- `build_gpt_model(hf_config, model_cfg, *, pre_process, post_process, vp_stage)` / `build_model_chunks`
- `load_model(path, model_cfg) -> (chunks, arch)`: HF directory or Megatron dist checkpoint, current TP/PP
- `load_hf_weights(models, hf_dir)`, `save_mcore_checkpoint`, `load_mcore_checkpoint`
- `export_hf_weights(models, hf_config, *, dtype, bucket_bytes) -> Iterator[(hf_name, tensor)]` (collective)
- `sequence_logprobs(models, input_ids, prompt_lens, response_lens, ...)` (forward-only, [B, T]) and
  `make_forward_step(loss_fn, ...)` (training)
- `score(model_dir, input_ids, *, temperature=1.0) -> [B, L-1]`
- `convert_main(argv) -> int` (`spro-mcore convert ...`)
"""

from __future__ import annotations

_EXPORTS = {
    "build_gpt_model": "spro_mcore.models.build",
    "build_model_chunks": "spro_mcore.models.build",
    "parse_hf_config": "spro_mcore.models.hf_arch",
    "HFArch": "spro_mcore.models.hf_arch",
    "UnsupportedModelError": "spro_mcore.models.hf_arch",
    "CheckpointError": "spro_mcore.models.hf_checkpoint",
    "load_model": "spro_mcore.models.loader",
    "model_arch": "spro_mcore.models.loader",
    "load_hf_weights": "spro_mcore.models.load_hf",
    "save_mcore_checkpoint": "spro_mcore.models.mcore_checkpoint",
    "load_mcore_checkpoint": "spro_mcore.models.mcore_checkpoint",
    "is_mcore_checkpoint": "spro_mcore.models.mcore_checkpoint",
    "export_hf_weights": "spro_mcore.models.export",
    "sequence_logprobs": "spro_mcore.models.logprobs",
    "make_forward_step": "spro_mcore.models.logprobs",
    "logprobs_from_hidden": "spro_mcore.models.logprobs",
    "vocab_parallel_logprobs": "spro_mcore.models.logprob_kernel",
    "fp8_pass": "spro_mcore.models.fp8",
    "score": "spro_mcore.models.scoring",
    "convert_main": "spro_mcore.models.convert",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):  # lazy: importing spro_mcore.models does not import megatron-core
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
