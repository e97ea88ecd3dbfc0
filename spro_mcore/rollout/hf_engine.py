"""The embedded engine: HF transformers `generate` in the trainer's process (the default for small CPU runs).

Sampling runs through HF's own temperature / top-k / top-p processors, passed explicitly so that the
model's generation_config defaults (HF's top_k=50, repetition penalties, ...) never apply. A last processor
keeps `log_softmax` of the fully processed scores of the current step, and a stopping criterion (called
once the sampled token is appended) reads the sampled token's log-prob from it: O(n * T) memory, never
the [n, T, vocab] score tensor.

Sleep really frees the weights: every parameter's storage is dropped (the Parameter objects stay, so tied
weights stay tied), and `wake()` allocates them again, uninitialised: the next `update_weights` must
refill every parameter before `generate` runs again (the loop wakes the engine right before its sync).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from spro_mcore.rollout.checkpoint_info import eos_token_ids
from spro_mcore.rollout.engine import (
    Engine, EngineError, EngineSpec, Sample, SamplingParams, check_prompts, check_weight_sync,
    check_weight_sync_delta,
)
from spro_mcore.rollout.weight_sync import SyncMeter, SyncStats, cast_tensors, engine_dtype, flatten, iter_buckets


class _LogprobRecorder(LogitsProcessor, StoppingCriteria):
    """As the last logits processor: keep log_softmax(processed scores). As a stopping criterion (called
    after the sampled token is appended): record that token's log-prob. Never stops generation itself."""

    def __init__(self):
        self.current: Optional[torch.Tensor] = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        if self.current is None:  # logits-processor call
            self.current = torch.log_softmax(scores.float(), dim=-1)
            return scores
        # stopping-criterion call: input_ids now ends with the token sampled from `current`
        self.steps.append(self.current.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.current = None
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HfEngine(Engine):
    def __init__(self, model_path: str, dtype: str = "float32", device: Optional[str] = None,
                 bucket_bytes: int = 512 << 20):
        self.dtype = engine_dtype(dtype)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.bucket_bytes = bucket_bytes
        try:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise EngineError(f"hf engine: cannot load an HF causal LM from {model_path!r}: {e}") from e
        self.model = model.to(self.device).eval()
        self.eos_token_ids = eos_token_ids(model_path)
        # generate() merges the checkpoint's sampling defaults (e.g. Qwen's top_k=20, repetition_penalty)
        # into ours; a neutral config leaves only the processors passed per call
        self.model.generation_config = GenerationConfig()
        self.vocab_size = self.model.config.vocab_size
        self.asleep = False
        self.weights_released = False  # woken from sleep, not yet refilled by update_weights

    @classmethod
    def from_spec(cls, spec: EngineSpec) -> "HfEngine":
        check_weight_sync_delta(spec, check_weight_sync(spec, ("tensors",)))
        return cls(spec.model_path, dtype=spec.dtype, bucket_bytes=spec.bucket_bytes)

    def _rng(self, seed: Optional[int]):
        if seed is None:
            return contextlib.nullcontext()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        ctx = torch.random.fork_rng(devices=devices)

        @contextlib.contextmanager
        def seeded():
            with ctx:
                torch.manual_seed(seed)
                yield

        return seeded()

    @torch.no_grad()
    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams) -> list[list[Sample]]:
        check_prompts(prompt_token_ids, self.vocab_size)
        if self.asleep or self.weights_released:
            raise EngineError("hf engine: generate() called while its weights are released (sleep); wake() and "
                              "update_weights() must run first")
        stop_ids = sampling.stop_ids(self.eos_token_ids)
        config = GenerationConfig(
            do_sample=True, temperature=1.0, top_k=None, top_p=1.0, max_new_tokens=sampling.max_new_tokens,
            eos_token_id=stop_ids or None, pad_token_id=stop_ids[0] if stop_ids else 0,
        )
        groups = []
        for i, prompt in enumerate(prompt_token_ids):
            recorder = _LogprobRecorder()
            processors = [TemperatureLogitsWarper(sampling.temperature)]
            if sampling.top_k != -1:
                processors.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(sampling.top_p))
            input_ids = torch.tensor([prompt] * sampling.n, device=self.device)
            with self._rng(sampling.sample_seed(i)):
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                    logits_processor=LogitsProcessorList(processors + [recorder]),
                    stopping_criteria=StoppingCriteriaList([recorder]),
                )
            generated = out[:, len(prompt):].tolist()
            logprobs = torch.stack(recorder.steps, dim=1)[:, : len(generated[0])].tolist()
            groups.append([self._sample(toks, lps, stop_ids) for toks, lps in zip(generated, logprobs)])
        return groups

    @staticmethod
    def _sample(tokens: list[int], logprobs: list[float], stop_ids: list[int]) -> Sample:
        # HF pads a finished row with pad tokens until the batch ends: cut after the first stop token
        for t, tok in enumerate(tokens):
            if tok in stop_ids:
                return Sample(tokens[: t + 1], logprobs[: t + 1], "stop")
        return Sample(tokens, logprobs, "length")

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        if self.asleep:
            raise EngineError("hf engine: update_weights() called while asleep; call wake() first")
        params = dict(self.model.named_parameters(remove_duplicate=False))  # tied weights under both names
        loaded: set[int] = set()
        with SyncMeter() as meter:
            buckets = meter.count(iter_buckets(cast_tensors(named_tensors, self.dtype), self.bucket_bytes))
            for name, tensor in flatten(buckets):
                param = params.get(name)
                if param is None:
                    raise EngineError(f"hf engine: update_weights got {name!r}, which the engine's model does not "
                                      f"have (expected HF names such as {next(iter(params))!r})")
                if param.shape != tensor.shape:
                    raise EngineError(f"hf engine: update_weights got {name!r} with shape {tuple(tensor.shape)}, "
                                      f"the model's is {tuple(param.shape)}")
                param.copy_(tensor)
                loaded.add(id(param))
        missing = [n for n, p in params.items() if id(p) not in loaded]
        if missing:
            raise EngineError(f"hf engine: update_weights left {len(missing)} parameters at their old values "
                              f"(e.g. {missing[:3]}); the exporter must send every weight")
        self.weights_released = False
        return meter.stats

    def _unique_parameters(self) -> list[torch.nn.Parameter]:
        return list({id(p): p for p in self.model.parameters()}.values())

    def sleep(self) -> None:
        if self.asleep:
            return
        self._shapes = [(p, p.shape) for p in self._unique_parameters()]
        for p, _ in self._shapes:
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.asleep = True

    def wake(self) -> None:
        if not self.asleep:
            return
        for p, shape in self._shapes:
            p.data = torch.empty(shape, dtype=p.dtype, device=p.device)
        self._shapes = []
        self.asleep, self.weights_released = False, True

    def close(self) -> None:
        self.model = None
