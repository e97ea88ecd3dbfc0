"""Load an HF safetensors checkpoint into this rank's (TP/PP/VPP-sharded) GPTModel chunks.

Each rank reads only the HF tensors of its own parameters (safetensors is memory-mapped) and copies in its
TP shard; nothing is communicated.
"""

from __future__ import annotations

import torch

from spro_mcore.models.hf_arch import HFArch
from spro_mcore.models.hf_checkpoint import CheckpointError, HFSafetensorsReader
from spro_mcore.models.unwrap import as_list, unwrap
from spro_mcore.models.weight_map import hf_to_shard, param_rules


@torch.no_grad()
def load_hf_weights(models, hf_dir: str, arch: HFArch | None = None) -> None:
    from megatron.core import parallel_state as mpu

    tp, rank = mpu.get_tensor_model_parallel_world_size(), mpu.get_tensor_model_parallel_rank()
    with HFSafetensorsReader(hf_dir) as reader:
        for chunk in as_list(models):
            model = unwrap(chunk)
            a = arch or model.hf_arch
            padded = model.vocab_size
            for rule in param_rules(model):
                names = rule.hf_names
                if rule.mcore_name == "output_layer.weight" and not rule.export:
                    names = ("model.embed_tokens.weight",)  # tied: the last stage's copy of the embedding
                shard = hf_to_shard(rule.kind, [reader.get(n) for n in names], a, tp, rank, padded_vocab=padded)
                if shard.shape != rule.param.shape:
                    raise CheckpointError(
                        f"{hf_dir}: {'/'.join(names)} gives a shard of shape {tuple(shard.shape)} for Megatron "
                        f"{rule.mcore_name} of shape {tuple(rule.param.shape)} (does config.json match the weights?)")
                rule.param.copy_(shard)
