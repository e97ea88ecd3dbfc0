"""The rollout engine interface: what the trainer asks of any generator, and the factory that picks one.

Invariants every backend keeps:
- `generate` returns, for prompt i, `sampling.n` samples in one group, in the order of the prompts given.
- `Sample.logprobs[t]` is the log-probability the engine assigned to `Sample.token_ids[t]` under the
  distribution it actually sampled from: `log_softmax(logits / temperature)`, restricted to the top-k /
  top-p set and renormalised when those are on (SGLang: top-k only). With `top_k=-1, top_p=1` (the RL
  default) this is exactly what the trainer computes with the same temperature, so the two can be compared
  token for token. The checkpoint's own sampling defaults (repetition penalty, min_p, ...) never apply.
- A stop token (EOS or one of `stop_token_ids`) that ends a sample is kept as its last token, with its
  log-prob, and the sample's `finish_reason` is "stop"; a sample cut at `max_new_tokens` ends "length".
- After `update_weights` returns, every later `generate` uses the new weights only (caches that hold
  activations of the old weights, such as prefix/KV caches, are dropped).
- Seeds: with `seed` set, sample j of prompt i is drawn with seed `seed + i * n + j` where the backend can
  seed per request (vLLM), so the same call on the same weights repeats exactly. Vary `seed` per step.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterable, Literal, Optional

import torch

from spro_mcore.rollout.weight_sync import SyncStats

FinishReason = Literal["stop", "length"]


class EngineError(RuntimeError):
    """An engine failed or was given bad input; the message says which and what to do."""


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt (the group size)
    temperature: float = 1.0  # > 0; the log-probs are of the temperature-scaled distribution
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    top_k: int = -1  # top-k sampling; -1 = off
    max_new_tokens: int = 64  # a sample that reaches this many tokens ends with finish_reason "length"
    stop_on_eos: bool = True  # end a sample at the model's EOS token(s)
    stop_token_ids: tuple[int, ...] = ()  # further tokens that end a sample (kept as its last token)
    seed: Optional[int] = None  # None: not reproducible; see the module docstring

    def __post_init__(self):
        problems = []
        if self.n < 1:
            problems.append(f"n={self.n} (must be >= 1)")
        if not self.temperature > 0:
            problems.append(f"temperature={self.temperature} (must be > 0: log-probs of greedy decoding are undefined)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} (must be in (0, 1])")
        if self.top_k != -1 and self.top_k < 1:
            problems.append(f"top_k={self.top_k} (must be -1 for off, or >= 1)")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} (must be >= 1)")
        if problems:
            raise EngineError("bad sampling parameters: " + "; ".join(problems))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    def stop_ids(self, eos_token_ids: Iterable[int]) -> list[int]:
        """All token ids that end a sample, given the model's EOS ids."""
        ids = list(eos_token_ids) if self.stop_on_eos else []
        return ids + [t for t in self.stop_token_ids if t not in ids]

    def sample_seed(self, prompt_index: int) -> Optional[int]:
        """The seed of the first sample of prompt `prompt_index` (sample j adds j)."""
        return None if self.seed is None else self.seed + prompt_index * self.n


@dataclass
class Sample:
    token_ids: list[int]  # generated tokens only (no prompt); a final stop token is included
    logprobs: list[float]  # one per token: the engine's log-prob of that token (see the module docstring)
    finish_reason: FinishReason = "length"

    def __post_init__(self):
        if len(self.token_ids) != len(self.logprobs):
            raise EngineError(
                f"engine returned {len(self.token_ids)} tokens but {len(self.logprobs)} log-probs for one sample"
            )


def check_prompts(prompt_token_ids: list[list[int]], vocab_size: Optional[int] = None) -> None:
    """Reject empty prompts and out-of-vocabulary ids with one message naming the first bad prompt."""
    for i, prompt in enumerate(prompt_token_ids):
        if len(prompt) == 0:
            raise EngineError(f"prompt {i} is empty: every prompt needs at least one token")
        if vocab_size is not None:
            bad = [t for t in prompt if not 0 <= t < vocab_size]
            if bad:
                raise EngineError(f"prompt {i} has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")


class Engine(abc.ABC):
    """A rollout engine. Use as a context manager or call `close()`."""

    @abc.abstractmethod
    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams) -> list[list[Sample]]:
        """One group of `sampling.n` samples per prompt, in prompt order."""

    @abc.abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        """Load full (unsharded) tensors named as in the HF checkpoint; returns bytes and time taken."""

    def sleep(self) -> None:
        """Release accelerator memory (weights and KV cache) until `wake()`; a no-op where not possible."""

    def wake(self) -> None:
        """Undo `sleep()`; a no-op where `sleep()` is."""

    def close(self) -> None:
        """Free the engine's resources (processes, memory, connections). Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class EngineSpec:
    """What `build_engine` needs; `from_rollout_config` reads it off a `RolloutConfig`."""

    backend: str = "hf"  # hf | vllm | sglang
    mode: str = "colocated"  # colocated (in this process) | server (over HTTP)
    model_path: str = ""  # HF checkpoint directory the engine starts from (colocated)
    server_urls: list[str] = field(default_factory=list)  # base URLs of running servers (server mode)
    dtype: str = "float32"  # engine weights dtype; weight sync casts to it
    kv_cache_memory_bytes: int = 256 << 20  # vLLM on CPU: KV cache size in bytes
    gpu_memory_utilization: float = 0.5  # vLLM on CUDA: fraction of GPU memory for weights + KV cache
    engine_tp: int = 1  # tensor parallel size inside each engine (colocated vLLM; SGLang broadcast group size)
    max_model_len: int = 0  # longest prompt + response a colocated vLLM engine accepts; 0 = the model's
    weight_sync: str = "auto"  # auto | tensors | folder | nccl
    weight_sync_dir: str = ""  # folder transport location ("" = a fresh directory under /dev/shm or /tmp)
    weight_sync_delta: bool = False  # send only the tensors changed since the last sync (weight_sync_delta.py)
    bucket_bytes: int = 512 << 20  # bytes per weight-sync bucket
    request_timeout_s: float = 600.0  # HTTP timeout per server request
    max_retries: int = 3  # HTTP retries with back-off before failing
    release_memory: bool = False  # sleep() really releases the engine's memory until wake() (rollout.sleep_when_idle);
    # colocated vLLM needs it at start-up (sleep mode, CUDA only), servers call their release endpoints
    nccl_master: str = ""  # weight_sync=nccl (SGLang): "host:port" of this trainer rank for the broadcast group
    seed: int = 0  # engine-level seed (vLLM)

    @classmethod
    def from_rollout_config(cls, cfg, model_path: str, **overrides) -> "EngineSpec":
        """Map a `spro_mcore.config.schema.RolloutConfig` to a spec. Every RolloutConfig field is either mapped
        (`SPEC_FIELDS`) or read by the loop per request (`SAMPLING_FIELDS`); a field that is neither is a
        programming error, raised here rather than silently dropped."""
        import dataclasses

        if dataclasses.is_dataclass(cfg):
            unmapped = sorted({f.name for f in dataclasses.fields(cfg)} - set(SPEC_FIELDS) - set(SAMPLING_FIELDS))
            if unmapped:
                raise TypeError(f"EngineSpec.from_rollout_config: rollout fields {unmapped} reach no engine "
                                "setting; map them in SPEC_FIELDS or list them in SAMPLING_FIELDS")
        kwargs = {spec_name: getattr(cfg, cfg_name) for cfg_name, spec_name in SPEC_FIELDS.items()}
        kwargs["model_path"] = model_path
        kwargs.update(overrides)
        return cls(**kwargs)


# RolloutConfig field -> EngineSpec field
SPEC_FIELDS = {
    "engine": "backend", "mode": "mode", "server_urls": "server_urls", "dtype": "dtype",
    "kv_cache_memory_bytes": "kv_cache_memory_bytes", "gpu_memory_utilization": "gpu_memory_utilization",
    "engine_tp": "engine_tp", "weight_sync": "weight_sync", "weight_sync_dir": "weight_sync_dir",
    "weight_sync_delta": "weight_sync_delta",
    "bucket_bytes": "bucket_bytes", "request_timeout_s": "request_timeout_s", "max_retries": "max_retries",
    "sleep_when_idle": "release_memory",
}
# RolloutConfig fields the loop turns into `SamplingParams` per request (not engine settings)
SAMPLING_FIELDS = ("n", "temperature", "top_p", "top_k", "max_new_tokens")


_BACKENDS = {
    ("hf", "colocated"): "spro_mcore.rollout.hf_engine:HfEngine",
    ("vllm", "colocated"): "spro_mcore.rollout.vllm_engine:VllmEngine",
    ("vllm", "server"): "spro_mcore.rollout.vllm_server:VllmServerEngine",
    ("sglang", "server"): "spro_mcore.rollout.sglang_server:SglangServerEngine",
}


def check_weight_sync(spec: EngineSpec, supported: tuple[str, ...]) -> str:
    """The transport to use: `spec.weight_sync`, or the backend's first one for "auto"."""
    if spec.weight_sync == "auto":
        return supported[0]
    if spec.weight_sync not in supported:
        raise EngineError(f"rollout.weight_sync={spec.weight_sync!r} is not available for {spec.backend}/{spec.mode}; "
                          f"use one of: auto, {', '.join(supported)}")
    return spec.weight_sync


def check_weight_sync_delta(spec: EngineSpec, transport: str, supported: tuple[str, ...] = ()) -> bool:
    """`spec.weight_sync_delta`, refused where the backend's receiving side cannot check a delta."""
    if spec.weight_sync_delta and transport not in supported:
        raise EngineError(f"rollout.weight_sync_delta=true is not available for {spec.backend}/{spec.mode} with "
                          f"weight_sync={transport}: " + (f"use weight_sync={supported[0]}" if supported else
                          "its receiving side cannot check a delta's checksum; set weight_sync_delta=false"))
    return spec.weight_sync_delta


def build_engine(spec: EngineSpec) -> Engine:
    """The engine for `spec.backend` in `spec.mode`; backends are imported only when chosen."""
    key = (spec.backend, spec.mode)
    if key not in _BACKENDS:
        valid = ", ".join(f"{b}/{m}" for b, m in _BACKENDS)
        raise EngineError(f"no rollout engine for backend={spec.backend!r} mode={spec.mode!r}; valid: {valid}")
    module_name, cls_name = _BACKENDS[key].split(":")
    import importlib

    return getattr(importlib.import_module(module_name), cls_name).from_spec(spec)
