"""Export a TP/PP-sharded Megatron model as full HF-named tensors: the seam for weight sync and conversion.

`export_hf_weights(models, hf_config)` is a generator of `(hf_name, tensor)` in the HF checkpoint's canonical
order (embedding, layers 0..L-1, final norm, lm_head). Contract:

- COLLECTIVE: every rank of the job that holds the model must iterate it to the end (it all-gathers TP
  shards inside each pipeline stage and broadcasts each stage's tensors over the pipeline group). Every
  rank receives every tensor (data-parallel replicas each run their own collectives); a rank that needs
  nothing (e.g. not the rank that writes files) still iterates and drops them.
- Tensors are full (unpadded vocab, unpacked q/k/v and gate/up), on the model's device, contiguous, in
  `dtype` (default: the parameters' dtype). They may be views into a shared bucket buffer: copy before
  mutating, and drop references to bound memory.
- Tied embeddings export `model.embed_tokens.weight` only (as HF's save_pretrained does).
- `bucket_bytes` groups consecutive tensors of one stage into one broadcast (fewer collectives); at most one
  bucket (or one tensor, when larger) is materialised at a time. None = one tensor at a time.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from spro_mcore.models.hf_arch import HFArch, parse_hf_config
from spro_mcore.models.unwrap import as_list, unwrap
from spro_mcore.models.weight_map import ParamRule, hf_tensor_shapes, iter_rules, shards_to_hf
from spro_mcore.parallel import collectives


def _gather_tp(t: torch.Tensor) -> list[torch.Tensor]:
    from megatron.core import parallel_state as mpu

    tp = mpu.get_tensor_model_parallel_world_size()
    if tp == 1:
        return [t]
    return collectives.all_gather(t, group="tp")


def _full_tensors(rule: ParamRule, arch: HFArch, dtype: torch.dtype) -> list[torch.Tensor]:
    data = rule.param.detach()
    shards = [data] if rule.kind == "replicated" else _gather_tp(data)
    return [t.to(dtype).contiguous() for t in shards_to_hf(rule.kind, shards, arch)]


@torch.no_grad()
def export_hf_weights(models, hf_config=None, *, dtype: Optional[torch.dtype] = None,
                      bucket_bytes: Optional[int] = None) -> Iterator[tuple[str, torch.Tensor]]:
    from megatron.core import parallel_state as mpu

    chunks = [unwrap(m) for m in as_list(models)]
    arch = parse_hf_config(hf_config) if hf_config is not None and not isinstance(hf_config, HFArch) else (
        hf_config or chunks[0].hf_arch)
    dtype = dtype or chunks[0].config.params_dtype
    device = next(chunks[0].parameters()).device
    shapes = hf_tensor_shapes(arch)
    order = {name: i for i, name in enumerate(shapes)}
    local = [r for r in iter_rules(chunks) if r.export]
    pp = mpu.get_pipeline_model_parallel_world_size()
    stage = mpu.get_pipeline_model_parallel_rank()

    # which pipeline stage holds each HF tensor (a rule's first HF name stands for the rule)
    mine = [r.hf_names[0] for r in local]
    per_stage = collectives.all_gather_object(mine, group="pp")
    owner_of = {n: s for s, names in enumerate(per_stage) for n in names}
    groups = {}  # first HF name -> all HF names of that Megatron parameter
    for r in local:
        groups[r.hf_names[0]] = r.hf_names
    if pp > 1:  # other stages' rules: derive their HF names from the canonical list
        for name in owner_of:
            groups.setdefault(name, _sibling_names(name, shapes))
    missing = set(shapes) - {n for g in groups.values() for n in g}
    if missing:
        raise RuntimeError(f"export: no stage holds {sorted(missing)[:3]}... (model does not match the config)")
    rule_of = {r.hf_names[0]: r for r in local}

    items = sorted(owner_of, key=order.__getitem__)
    nbytes = lambda first: sum(_numel(shapes[n]) for n in groups[first]) * dtype.itemsize  # noqa: E731
    # buckets: consecutive parameters of one stage up to bucket_bytes
    buckets: list[list[str]] = []
    for first in items:
        if (buckets and owner_of[buckets[-1][0]] == owner_of[first] and bucket_bytes is not None
                and sum(nbytes(f) for f in buckets[-1]) + nbytes(first) <= bucket_bytes):
            buckets[-1].append(first)
        else:
            buckets.append([first])

    for bucket in buckets:
        src_stage = owner_of[bucket[0]]
        names = [n for first in bucket for n in groups[first]]
        if src_stage == stage:
            tensors = [t for first in bucket for t in _full_tensors(rule_of[first], arch, dtype)]
            if pp == 1:
                yield from zip(names, tensors)
                continue
            flat = torch.cat([t.reshape(-1) for t in tensors])
            del tensors
        else:
            flat = torch.empty(sum(_numel(shapes[n]) for n in names), dtype=dtype, device=device)
        collectives.broadcast(flat, src_group_rank=src_stage, group="pp")
        offset = 0
        for n in names:
            k = _numel(shapes[n])
            yield n, flat[offset: offset + k].view(shapes[n])
            offset += k
        del flat


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _sibling_names(first: str, shapes: dict) -> tuple[str, ...]:
    """HF names packed with `first` into one Megatron parameter (q -> q,k,v; gate -> gate,up)."""
    for a, rest in ((".self_attn.q_proj.", ("k_proj", "v_proj")), (".mlp.gate_proj.", ("up_proj",))):
        if a in first:
            head, tail = first.split(a)
            kind = a.split(".")[2]
            return (first, *(f"{head}{a.replace(kind, r)}{tail}" for r in rest))
    return (first,)
