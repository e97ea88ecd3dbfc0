"""SGLang servers (or an sglang-router in front of them) over SGLang's native HTTP API.

Request/response shapes used (SGLang `io_struct.py` / `http_server.py`):
- POST /generate {"input_ids": [[...]] * n, "sampling_params": [{...}] * n, "return_logprob": true}
  -> a list of n {"output_ids": [...], "meta_info": {"finish_reason": {"type": "stop"|"length"|"abort", ...},
  "output_token_logprobs": [[logprob, token_id, null], ...], ...}}. One batch of n copies per prompt group
  (the radix cache shares the prompt), each copy with its own `sampling_seed`.
- POST /update_weights_from_disk {"model_path": folder} -> {"success", "message", "num_paused_requests"};
  then POST /flush_cache (200, or 400 while requests run).
- weight_sync="nccl": POST /init_weights_update_group {"master_address", "master_port", "rank_offset",
  "world_size", "group_name", "backend"} once, then per bucket POST /update_weights_from_distributed
  {"names", "dtypes", "shapes", "group_name", "flush_cache"} while the trainer broadcasts (see
  weight_sync_nccl.py); GPU clusters only.
- POST /release_memory_occupation {} and /resume_memory_occupation {} (servers started with
  --enable-memory-saver) for sleep()/wake().

Log-probs: SGLang returns log_softmax(logits / T) over the whole vocabulary (the launcher must not set
SGLANG_RETURN_ORIGINAL_LOGPROB, which would drop the temperature), not renormalised over a top-k / top-p set.
With top-k this adapter asks for the k top log-probs (`top_logprobs_num`, answered in
`meta_info.output_top_logprobs`) and renormalises over them, which is exact; top-p cannot be renormalised
from what SGLang returns and is rejected. Reproducible seeds need --enable-deterministic-inference.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional, Sequence

import torch

from spro_mcore.rollout.checkpoint_info import eos_token_ids, missing_weights, tensor_names
from spro_mcore.rollout.engine import (
    Engine, EngineError, EngineSpec, Sample, SamplingParams, check_prompts, check_weight_sync,
    check_weight_sync_delta,
)
from spro_mcore.rollout.server_pool import ServerPool
from spro_mcore.rollout.weight_sync import SyncMeter, SyncStats, cast_tensors, engine_dtype, iter_buckets
from spro_mcore.rollout.weight_sync_folder import SyncDir, write_safetensors_folder


class SglangServerEngine(Engine):
    def __init__(self, urls: Sequence[str], model_path: str = "", dtype: str = "bfloat16",
                 bucket_bytes: int = 512 << 20, weight_sync: str = "folder", weight_sync_dir: str = "",
                 timeout_s: float = 600.0, max_retries: int = 3, ready_timeout_s: Optional[float] = None,
                 release_memory: bool = False, nccl_master: Optional[tuple[str, int]] = None,
                 engine_world_size: int = 1, broadcast_backend: str = "nccl"):
        """`model_path`: the HF checkpoint the servers were started from (EOS ids, the weights an update must
        contain, config files for the sync folder). weight_sync: folder | nccl; nccl needs `nccl_master`
        (this host's address and a free port) and the total number of engine GPU workers; its group uses
        `broadcast_backend` (nccl; gloo sends CPU tensors, which is how the CPU test runs this path)."""
        if weight_sync not in ("folder", "nccl"):
            raise EngineError(f"sglang engine: weight_sync={weight_sync!r} is not supported; use folder or nccl")
        if weight_sync == "nccl" and nccl_master is None:
            raise EngineError("sglang engine: weight_sync=nccl needs nccl_master=(this host's address, free port)")
        self.pool = ServerPool(urls, "sglang server", timeout_s=timeout_s, max_retries=max_retries)
        self.model_path = model_path
        self.dtype = engine_dtype(dtype)
        self.bucket_bytes = bucket_bytes
        self.weight_sync = weight_sync
        self.sync_dir = SyncDir(weight_sync_dir, "sglang")
        self.release_memory = release_memory
        self.nccl_master = nccl_master
        self.engine_world_size = engine_world_size
        self.broadcast_backend = broadcast_backend
        self._group = None
        self.eos_token_ids: Optional[list[int]] = eos_token_ids(model_path) if model_path else None
        self.expected_weights = tensor_names(model_path) if model_path else set()
        self.pool.wait_ready("/health", ready_timeout_s)  # None: timeout_s

    @classmethod
    def from_spec(cls, spec: EngineSpec) -> "SglangServerEngine":
        host, _, port = spec.nccl_master.rpartition(":")
        check_weight_sync_delta(spec, check_weight_sync(spec, ("folder", "nccl")))  # SGLang's receiver: not ours
        return cls(spec.server_urls, model_path=spec.model_path, dtype=spec.dtype, bucket_bytes=spec.bucket_bytes,
                   weight_sync=check_weight_sync(spec, ("folder", "nccl")), weight_sync_dir=spec.weight_sync_dir,
                   timeout_s=spec.request_timeout_s, max_retries=spec.max_retries,
                   release_memory=spec.release_memory, nccl_master=(host, int(port)) if spec.nccl_master else None,
                   engine_world_size=len(spec.server_urls) * spec.engine_tp)

    def _sampling_params(self, sampling: SamplingParams, seed: Optional[int]) -> dict:
        params = {"temperature": sampling.temperature, "top_p": 1.0, "top_k": sampling.top_k,
                  "max_new_tokens": sampling.max_new_tokens, "skip_special_tokens": False,
                  # neutral, not the checkpoint's defaults: the trainer's log-probs know only temperature/top-k
                  "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
        if self.eos_token_ids is None:  # the server knows EOS from its tokenizer
            params.update(ignore_eos=not sampling.stop_on_eos, stop_token_ids=list(sampling.stop_token_ids))
        else:
            params.update(ignore_eos=True, stop_token_ids=sampling.stop_ids(self.eos_token_ids))
        if seed is not None:
            params["sampling_seed"] = seed
        return params

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams) -> list[list[Sample]]:
        check_prompts(prompt_token_ids)
        if sampling.top_p < 1.0:
            raise EngineError("sglang engine: top_p < 1 is not supported: SGLang's log-probs are not renormalised "
                              "over the nucleus, so they would not be of the distribution sampled from")
        top_k = sampling.top_k if sampling.top_k != -1 else 0

        def one_group(url: str, item: tuple[int, list[int]]) -> list[Sample]:
            i, prompt = item
            first = sampling.sample_seed(i)
            payload = {
                "input_ids": [prompt] * sampling.n,
                "sampling_params": [self._sampling_params(sampling, None if first is None else first + j)
                                    for j in range(sampling.n)],
                "return_logprob": True,
            }
            if top_k:
                payload["top_logprobs_num"] = top_k
            outs = self.pool.request(url, "POST", "/generate", payload)
            if not isinstance(outs, list) or len(outs) != sampling.n:
                raise EngineError(f"sglang server at {url}: asked for {sampling.n} samples of prompt {i}, got "
                                  f"{type(outs).__name__} {len(outs) if isinstance(outs, list) else ''}")
            return [self._sample(url, i, out, renormalise=bool(top_k)) for out in outs]

        return self.pool.round_robin(one_group, list(enumerate(prompt_token_ids)))

    @staticmethod
    def _sample(url: str, i: int, out: dict, renormalise: bool) -> Sample:
        meta = out["meta_info"]
        reason = meta["finish_reason"]["type"] if meta.get("finish_reason") else None
        if reason not in ("stop", "length"):
            raise EngineError(f"sglang server at {url}: prompt {i} finished with {meta.get('finish_reason')!r}")
        entries = meta["output_token_logprobs"]
        tokens = list(out["output_ids"])
        if [e[1] for e in entries] != tokens:
            raise EngineError(f"sglang server at {url}: output_token_logprobs do not match output_ids for prompt {i}")
        logprobs = [float(e[0]) for e in entries]
        if renormalise:  # over the top-k set the token was drawn from
            for t, (tok, top) in enumerate(zip(tokens, meta["output_top_logprobs"])):
                kept = torch.tensor([e[0] for e in top], dtype=torch.float64)
                if tok not in [e[1] for e in top]:
                    raise EngineError(f"sglang server at {url}: sampled token {tok} is outside its top-k set")
                logprobs[t] -= torch.logsumexp(kept, 0).item()
        return Sample(tokens, logprobs, reason)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        sent: set[str] = set()

        def named(stream):
            for name, t in stream:
                sent.add(name)
                yield name, t

        with SyncMeter() as meter:
            buckets = meter.count(iter_buckets(named(cast_tensors(named_tensors, self.dtype)), self.bucket_bytes))
            if self.weight_sync == "folder":
                folder = write_safetensors_folder(buckets, self.sync_dir.path, config_dir=self.model_path or None)
                self._check_complete(sent)
                self.pool.each(lambda url: self._load_folder(url, str(folder)))
            else:
                self._broadcast(buckets)
                self._check_complete(sent)
        return meter.stats

    def _check_complete(self, sent: set[str]) -> None:
        missing = missing_weights(self.expected_weights, sent)
        if missing:
            raise EngineError(f"sglang engine: update_weights is missing {len(missing)} weights (e.g. {missing[:3]}); "
                              "the exporter must send every weight")

    def _load_folder(self, url: str, folder: str) -> None:
        answer = self.pool.request(url, "POST", "/update_weights_from_disk", {"model_path": folder})
        if not (isinstance(answer, dict) and answer.get("success")):
            raise EngineError(f"sglang server at {url}: /update_weights_from_disk failed: {answer}")
        self.pool.request(url, "POST", "/flush_cache")

    def _broadcast(self, buckets) -> None:
        from spro_mcore.rollout import weight_sync_nccl as nccl

        group_name = "spro_weight_update"
        if self._group is None:
            host, port = self.nccl_master
            world = 1 + self.engine_world_size
            per_server = self.engine_world_size // len(self.pool.urls)
            joins = self._in_background(lambda: self.pool.each(lambda url: self.pool.request(
                url, "POST", "/init_weights_update_group", {
                    "master_address": host, "master_port": port, "world_size": world, "group_name": group_name,
                    "backend": self.broadcast_backend, "rank_offset": 1 + self.pool.urls.index(url) * per_server})))
            self._group = nccl.init_broadcast_group(host, port, 0, world, group_name=group_name,
                                                    backend=self.broadcast_backend)
            joins()
        device = torch.device("cuda", torch.cuda.current_device()) if self.broadcast_backend == "nccl" else "cpu"

        def announce(meta: nccl.BucketMeta):
            return self._in_background(lambda: self.pool.each(lambda url: self.pool.request(
                url, "POST", "/update_weights_from_distributed",
                {**meta.as_json(), "group_name": group_name, "flush_cache": True})))

        nccl.send_all(self._group, ([(n, t.to(device)) for n, t in b] for b in buckets), announce)

    @staticmethod
    def _in_background(fn):
        """Start fn in a thread; the returned callable waits for it and re-raises its error."""
        executor = ThreadPoolExecutor(max_workers=1)
        future = executor.submit(fn)
        executor.shutdown(wait=False)
        return future.result

    def sleep(self) -> None:
        if self.release_memory:
            self.pool.each(lambda url: self.pool.request(url, "POST", "/release_memory_occupation", {}))

    def wake(self) -> None:
        if self.release_memory:
            self.pool.each(lambda url: self.pool.request(url, "POST", "/resume_memory_occupation", {}))

    def close(self) -> None:
        if self._group is not None:
            from spro_mcore.rollout.weight_sync_nccl import destroy_group

            destroy_group(self._group)
            self._group = None
        self.sync_dir.cleanup()
        self.pool.close()

