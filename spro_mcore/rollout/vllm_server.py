"""vLLM OpenAI-compatible servers (server mode): one or several, each prompt group on one server in turn.

Servers are started by `launch/vllm_server.sh`, which sets what this client relies on:
- `--logprobs-mode processed_logprobs`: log-probs of the temperature-scaled (top-k/top-p) distribution
  actually sampled from (see `engine.py`);
- `VLLM_SERVER_DEV_MODE=1` and `--worker-extension-cls ...SproWorkerExtension`: the weight update is
  POST /pause -> /collective_rpc spro_reload_weights(weights_path=<safetensors folder>) ->
  /reset_prefix_cache -> /resume, on every server.
Generation uses POST /v1/completions with token-id prompts, `logprobs: 0` (the sampled token's log-prob)
and `return_token_ids: true`. The folder must be readable by every server (/dev/shm on one machine, a
shared filesystem across machines).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from spro_mcore.rollout.checkpoint_info import eos_token_ids, missing_weights, tensor_names
from spro_mcore.rollout.engine import (
    Engine, EngineError, EngineSpec, Sample, SamplingParams, check_prompts, check_weight_sync,
    check_weight_sync_delta,
)
from spro_mcore.rollout.server_pool import ServerPool
from spro_mcore.rollout.weight_sync import SyncMeter, SyncStats, cast_tensors, engine_dtype, iter_buckets
from spro_mcore.rollout.weight_sync_delta import DeltaSender
from spro_mcore.rollout.weight_sync_folder import SyncDir, write_safetensors_folder
from spro_mcore.rollout.weight_sync_folder_delta import write_delta_folder


class VllmServerEngine(Engine):
    def __init__(self, urls: Sequence[str], model_path: str = "", dtype: str = "float32",
                 bucket_bytes: int = 512 << 20, weight_sync_dir: str = "", timeout_s: float = 600.0,
                 max_retries: int = 3, ready_timeout_s: Optional[float] = None, release_memory: bool = False,
                 weight_sync_delta: bool = False):
        """`model_path`: the HF checkpoint the servers were started from (EOS ids, the set of weights an
        update must contain, config files for the sync folder); "" leaves EOS to the servers.
        `release_memory`: make sleep()/wake() call /sleep and /wake_up (servers sharing GPUs with training)."""
        self.pool = ServerPool(urls, "vllm server", timeout_s=timeout_s, max_retries=max_retries)
        self.model_path = model_path
        self.dtype = engine_dtype(dtype)
        self.bucket_bytes = bucket_bytes
        self.sync_dir = SyncDir(weight_sync_dir, "vllm_server")
        self.release_memory = release_memory
        self.eos_token_ids: Optional[list[int]] = eos_token_ids(model_path) if model_path else None
        self.expected_weights = tensor_names(model_path) if model_path else set()
        self.pool.wait_ready("/health", ready_timeout_s)  # None: timeout_s
        # delta: only changed tensors are written; each server's worker checks the folder before loading it
        self.delta = DeltaSender() if weight_sync_delta else None
        models = self.pool.request(self.pool.urls[0], "GET", "/v1/models")
        self.model_name = models["data"][0]["id"]

    @classmethod
    def from_spec(cls, spec: EngineSpec) -> "VllmServerEngine":
        delta = check_weight_sync_delta(spec, check_weight_sync(spec, ("folder",)), ("folder",))
        return cls(spec.server_urls, model_path=spec.model_path, dtype=spec.dtype, bucket_bytes=spec.bucket_bytes,
                   weight_sync_dir=spec.weight_sync_dir, timeout_s=spec.request_timeout_s,
                   max_retries=spec.max_retries, release_memory=spec.release_memory, weight_sync_delta=delta)

    def _payload(self, prompt: list[int], sampling: SamplingParams, seed: Optional[int]) -> dict:
        payload = {
            "model": self.model_name, "prompt": prompt, "n": sampling.n, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "top_k": 0 if sampling.top_k == -1 else sampling.top_k,
            "max_tokens": sampling.max_new_tokens, "logprobs": 0, "return_token_ids": True,
            "skip_special_tokens": False,
            # neutral, not the checkpoint's defaults: the trainer's log-probs know only temperature/top-k/top-p
            "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        }
        if self.eos_token_ids is None:  # the server knows EOS from its tokenizer
            payload.update(ignore_eos=not sampling.stop_on_eos, stop_token_ids=list(sampling.stop_token_ids))
        else:
            payload.update(ignore_eos=True, stop_token_ids=sampling.stop_ids(self.eos_token_ids))
        if seed is not None:
            payload["seed"] = seed
        return payload

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams) -> list[list[Sample]]:
        check_prompts(prompt_token_ids)

        def one_group(url: str, item: tuple[int, list[int]]) -> list[Sample]:
            i, prompt = item
            body = self.pool.request(url, "POST", "/v1/completions", self._payload(prompt, sampling,
                                                                                     sampling.sample_seed(i)))
            group = []
            for choice in sorted(body["choices"], key=lambda c: c["index"]):
                if choice["finish_reason"] not in ("stop", "length"):
                    raise EngineError(f"vllm server at {url}: prompt {i} finished with {choice['finish_reason']!r}")
                group.append(Sample(list(choice["token_ids"]), list(choice["logprobs"]["token_logprobs"]),
                                    choice["finish_reason"]))
            if len(group) != sampling.n:
                raise EngineError(f"vllm server at {url}: asked for {sampling.n} samples of prompt {i}, got {len(group)}")
            return group

        return self.pool.round_robin(one_group, list(enumerate(prompt_token_ids)))

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        sent: set[str] = set()

        def named(stream):
            for name, t in stream:
                sent.add(name)
                yield name, t

        with SyncMeter() as meter:
            stream = named(cast_tensors(named_tensors, self.dtype))
            if self.delta is None:
                buckets = meter.count(iter_buckets(stream, self.bucket_bytes))
                folder = write_safetensors_folder(buckets, self.sync_dir.path, config_dir=self.model_path or None)
                kwargs = {"weights_path": str(folder)}
            else:
                buckets = meter.count(iter_buckets(self.delta.select(stream), self.bucket_bytes))
                folder = write_delta_folder(buckets, self.sync_dir.path, self.delta, config_dir=self.model_path or None)
                kwargs = {"weights_path": str(folder), "expect_version": self.delta.manifest().version}
            missing = missing_weights(self.expected_weights, sent)
            if missing:
                raise EngineError(f"vllm server: update_weights is missing {len(missing)} weights (e.g. "
                                  f"{missing[:3]}); the exporter must send every weight")
            self.pool.each(lambda url: self._reload(url, kwargs))
            if self.delta is not None:
                self.delta.commit()
        return meter.stats

    def _reload(self, url: str, kwargs: dict) -> None:
        self.pool.request(url, "POST", "/pause", params={"mode": "wait"})
        done = False
        try:
            try:
                self.pool.request(url, "POST", "/collective_rpc", {"method": "spro_reload_weights", "kwargs": kwargs})
            except EngineError as e:
                if "weight sync delta" in str(e):  # refused before loading: the server keeps its weights
                    raise
                raise EngineError(f"{e} (was the server started by launch/vllm_server.sh, with "
                                  "VLLM_SERVER_DEV_MODE=1 and --worker-extension-cls "
                                  "spro_mcore.rollout.vllm_worker_extension.SproWorkerExtension?)") from e
            answer = self.pool.request(url, "POST", "/reset_prefix_cache")
            if not (isinstance(answer, dict) and answer.get("success")):
                raise EngineError(f"vllm server at {url}: prefix cache reset failed after the weight update: {answer}")
            done = True
        finally:  # a paused server would hang every later request; a failed resume must not hide the first error
            try:
                self.pool.request(url, "POST", "/resume")
            except EngineError:
                if done:
                    raise

    def sleep(self) -> None:
        if self.release_memory:
            self.pool.each(lambda url: self.pool.request(url, "POST", "/sleep", params={"level": 1}))

    def wake(self) -> None:
        if self.release_memory:
            self.pool.each(lambda url: self.pool.request(url, "POST", "/wake_up"))

    def close(self) -> None:
        self.sync_dir.cleanup()
        self.pool.close()
