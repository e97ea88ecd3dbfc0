"""Weight sync, the part every transport shares: cast to the engine dtype, bucket by bytes, count and time.

Input is any iterable of `(hf_name, full_tensor)` (the Megatron exporter's output, or an HF state dict).
Transports (in-process tensors, a safetensors folder, an NCCL broadcast) consume the buckets this yields;
`SyncStats` is what one sync cost, reported as `time/weight_sync` and `weight_sync/bytes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def engine_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown engine dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class SyncStats:
    seconds: float = 0.0
    bytes: int = 0
    tensors: int = 0
    buckets: int = 0

    def metrics(self) -> dict[str, float]:
        return {"time/weight_sync": self.seconds, "weight_sync/bytes": float(self.bytes)}


def cast_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """Detached, contiguous tensors in `dtype` (floating point only; integer buffers pass unchanged)."""
    for name, tensor in named_tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"weight sync: {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        t = tensor.detach()
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        yield name, t.contiguous()


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
                 ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of at most `bucket_bytes` (a single larger tensor forms a bucket of its own).

    Order is kept: engines that process a layer once all its weights arrived (vLLM's reload) see the
    exporter's layer order.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    seen: set[str] = set()
    for name, tensor in named_tensors:
        if name in seen:
            raise ValueError(f"weight sync: tensor {name!r} was given twice")
        seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


class SyncMeter:
    """Counts what passes through and times the whole sync: `with SyncMeter() as m: transport(m.count(b))`."""

    def __init__(self):
        self.stats = SyncStats()
        self._t0 = 0.0

    def __enter__(self) -> "SyncMeter":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.stats.seconds = time.perf_counter() - self._t0

    def count(self, buckets: Iterable[list[tuple[str, torch.Tensor]]]) -> Iterator[list[tuple[str, torch.Tensor]]]:
        for bucket in buckets:
            self.stats.buckets += 1
            self.stats.tensors += len(bucket)
            self.stats.bytes += sum(t.numel() * t.element_size() for _, t in bucket)
            yield bucket


def flatten(buckets: Iterable[list[tuple[str, torch.Tensor]]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Buckets back into one stream of named tensors (for engines that load a stream in one call)."""
    for bucket in buckets:
        yield from bucket
