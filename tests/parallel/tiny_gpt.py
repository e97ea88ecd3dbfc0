"""A tiny megatron-core GPTModel (local spec) for the parallel/compat tests, and helpers to gather its
TP-sharded parameters into full tensors. GeLU MLP so that every TP shard is a plain chunk along the
parameter's partition_dim (the GLU layouts are covered by the models tests)."""

from __future__ import annotations

import torch

VOCAB, HIDDEN, HEADS, LAYERS, SEQ = 128, 64, 4, 4, 16


def build(tp: int = 1, pp: int = 1, seed: int = 0, dtype=torch.float32):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig
    from megatron.core import parallel_state as mpu

    from spro_mcore.parallel import initialize_model_parallel, seed_everything

    initialize_model_parallel(tp=tp, pp=pp)
    seed_everything(seed)
    cfg = TransformerConfig(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, num_query_groups=2,
        ffn_hidden_size=4 * HIDDEN, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        use_cpu_initialization=True, params_dtype=dtype, hidden_dropout=0.0, attention_dropout=0.0,
        normalization="RMSNorm", add_bias_linear=False, pipeline_dtype=dtype,
    )
    return GPTModel(
        config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=VOCAB,
        max_sequence_length=SEQ, pre_process=mpu.is_pipeline_first_stage(), post_process=mpu.is_pipeline_last_stage(),
        position_embedding_type="rope", share_embeddings_and_output_weights=False, parallel_output=True,
    )


def inputs(batch: int = 2, seed: int = 123):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch, SEQ), generator=g)
    position_ids = torch.arange(SEQ).unsqueeze(0).expand(batch, SEQ)
    return tokens, position_ids


def gather_tp(t: torch.Tensor, param) -> torch.Tensor:
    """Full tensor of a TP-sharded parameter (or its grad) from every TP rank."""
    from megatron.core import parallel_state as mpu
    import torch.distributed as dist

    if not getattr(param, "tensor_model_parallel", False) or mpu.get_tensor_model_parallel_world_size() == 1:
        return t.detach().clone()
    parts = [torch.empty_like(t) for _ in range(mpu.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, t.detach().contiguous(), group=mpu.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=param.partition_dim)


def load_full(model, full: dict[str, torch.Tensor], wrong_dim: bool = False) -> None:
    """Copy full tensors into this rank's shards (the inverse of gather_tp). `wrong_dim` shards square
    row-parallel weights along the other dim (a deliberate bug, to show the TP test can fail)."""
    from megatron.core import parallel_state as mpu

    tp, rank = mpu.get_tensor_model_parallel_world_size(), mpu.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = full[name]
            if getattr(p, "tensor_model_parallel", False) and tp > 1:
                dim = p.partition_dim
                if wrong_dim and dim == 1 and t.shape[0] == t.shape[1]:
                    dim = 0
                    t = t.chunk(tp, dim=dim)[rank].reshape(p.shape)
                else:
                    t = t.chunk(tp, dim=dim)[rank]
            p.copy_(t)
