"""The typed configuration of spro-mcore: every knob, its default and what it does.

YAML recipes in `configs/` set these; `section.key=value` on the command line overrides them. Fields whose
values come from a fixed set list it in `CHOICES` (checked by `config.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModelConfig:
    path: str = "builtin:tiny_base"  # HF directory, Megatron dist checkpoint, or builtin:<name> (shipped asset)
    reference_path: str = ""  # frozen reference weights; "" = the initial policy (model.path)
    reference_mode: str = "swap"  # swap: one model, reference weights swapped in; separate: a second model
    dtype: str = "float32"  # parameter/compute dtype: float32 | bfloat16 | float16
    transformer_impl: str = "auto"  # local | transformer_engine | auto (TE when importable)
    fp8: Optional[str] = None  # None | e4m3 | hybrid (needs Transformer Engine)
    fp8_recipe: str = "delayed"  # delayed | tensorwise | blockwise | mxfp8
    fp8_scope: str = "logprobs"  # logprobs: FP8 only in forward-only log-prob passes; all: training too
    logprob_chunk_tokens: int = 1024  # tokens per chunk of the vocab-parallel log-prob/entropy kernel
    recompute_activations: bool = False  # full-layer activation recomputation in the update


@dataclass
class ParallelConfig:
    tp: int = 1  # tensor model parallel size
    pp: int = 1  # pipeline model parallel size
    cp: int = 1  # context parallel size
    ep: int = 1  # expert model parallel size (MoE)
    dp: int = 0  # data parallel size; 0 = world_size / (tp * pp * cp)
    vpp: Optional[int] = None  # virtual pipeline stages per rank (interleaved 1F1B)
    sequence_parallel: bool = False  # Megatron sequence parallelism (GPU with TE norms)
    timeout_minutes: int = 30  # torch.distributed collective timeout


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm | sglang
    mode: str = "colocated"  # colocated: engine in the trainer process; server: engine servers over HTTP
    n: int = 8  # responses sampled per prompt (the group size)
    temperature: float = 1.0  # sampling temperature; the trainer's log-probs use the same one
    top_p: float = 1.0  # nucleus sampling
    top_k: int = -1  # top-k sampling; -1 = off
    max_new_tokens: int = 64  # response length limit
    server_urls: list[str] = field(default_factory=list)  # engine servers for mode=server (round-robin)
    dtype: str = "float32"  # engine weights dtype
    kv_cache_memory_bytes: int = 268435456  # vLLM KV cache size (bytes); needed on CPU
    gpu_memory_utilization: float = 0.5  # vLLM on CUDA: fraction of GPU memory for the engine
    engine_tp: int = 1  # tensor parallel size inside each engine
    weight_sync: str = "auto"  # auto | tensors (in process) | folder (safetensors) | nccl (broadcast)
    weight_sync_dir: str = ""  # folder transport location; "" = <output_dir>/weight_sync (or /dev/shm)
    weight_sync_delta: bool = False  # send only tensors changed since the last sync, checksummed (vLLM folder)
    bucket_bytes: int = 536870912  # bytes per weight-sync bucket
    sleep_when_idle: bool = False  # engines free weights + KV cache during the Megatron passes (vLLM: CUDA only)
    request_timeout_s: float = 600.0  # HTTP timeout per engine request
    max_retries: int = 3  # engine request retries (with back-off) before the run stops


@dataclass
class AlgoConfig:
    estimator: str = "spro"  # spro | grpo | pav | spro_balanced (a variant, not the paper's: see algo/msa_balance.py)
    beta: float = 0.1  # SPRO: scale of the self-guided process reward beta*(log pi_old - log pi_ref)
    msa_ratio: float = 0.25  # spro_balanced only: mean |MSA| held at this multiple of mean |outcome term|
    baseline: str = "mean"  # SPRO MSA baseline: mean (paper, self included) | leave_one_out
    std_normalize: bool = True  # GRPO term: divide by the group std (False = Dr. GRPO)
    eps: float = 1e-6  # std epsilon
    eps_low: float = 0.2  # PPO clip lower bound 1 - eps_low
    eps_high: float = 0.2  # PPO clip upper bound 1 + eps_high (clip-higher: > eps_low)
    dual_clip_c: Optional[float] = None  # dual-clip constant for negative advantages (e.g. 3.0); None = off
    loss_agg: str = "seq_mean_token_mean"  # seq_mean_token_mean | token_mean | seq_mean_token_sum_norm
    kl_coef: float = 0.0  # KL-to-reference penalty coefficient
    kl_estimator: str = "k3"  # k1 | k2 | k3
    entropy_coef: float = 0.0  # entropy bonus coefficient
    tis: bool = False  # truncated importance sampling against the engine's log-probs
    tis_cap: float = 2.0  # TIS cap C
    mis: Optional[str] = None  # masked importance sampling vs the engine: None | token | sequence (not with tis)
    mis_low: float = 0.5  # MIS: drop tokens/sequences whose trainer/engine ratio is below this
    mis_high: float = 2.0  # MIS: ... or above this (IcePop: mis=token, mis_low=0.5, mis_high=5)
    old_logprobs: str = "recompute"  # recompute: trainer's forward pass; engine: the engine's own (one pass fewer)
    pav_source: str = "verifier"  # PAV: where Q^pi per step comes from: verifier (algo.pav_path) | mc (continuations)
    pav_path: str = ""  # PAV verifier source: a `pav train` output directory (trained for model.path)
    pav_prover_k: int = 4  # PAV: Best-of-K prover, Q^mu = 1 - (1 - Q^pi)^K (1 = the policy itself: no signal)
    pav_n_mc: int = 4  # PAV mc source: continuations of the current policy sampled after every step prefix
    pav_alpha: float = 3.0  # PAV: weight of the progress term, A = A^GRPO + alpha * A^mu (paper: 3-5)
    pav_prover: str = "initial"  # PAV prover's base policy: initial (model.path, frozen: the paper's best) | current
    pav_splitter: str = ""  # PAV step splitter ("" = the verifier's own; mc source: "" = "\\n"); as pav.splitter


@dataclass
class OptimConfig:
    lr: float = 1e-6  # peak learning rate
    min_lr: float = 0.0  # floor of the decay schedules
    lr_schedule: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    adam_beta1: float = 0.9  # Adam beta1
    adam_beta2: float = 0.999  # Adam beta2
    adam_eps: float = 1e-8  # Adam epsilon
    clip_grad: float = 1.0  # gradient clipping by global norm; 0 = off
    use_distributed_optimizer: bool = True  # shard optimizer state over data-parallel ranks
    max_nonfinite_in_row: int = 3  # non-finite loss/grad updates skipped in a row before the run stops


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic (built-in arithmetic task) | file
    train_path: str = ""  # JSONL or Parquet prompts (source=file)
    eval_path: str = ""  # held-out JSONL or Parquet (source=file)
    prompt_key: str = "prompt"  # field with the prompt string
    messages_key: str = "messages"  # field with chat messages (used when present instead of prompt_key)
    answer_key: str = "answer"  # field with the ground-truth answer
    chat_template: str = "auto"  # auto (when the tokenizer has one) | never | always
    max_prompt_tokens: int = 512  # longer prompts are dropped (and counted)
    prompts_per_step: int = 8  # prompts per step (each yields rollout.n responses)
    shuffle: bool = True  # reshuffle every epoch (deterministic from trainer.seed)
    synthetic_task: str = "arithmetic"  # arithmetic (2-4 operations, quickstart) | chain (5-9 with parentheses)
    synthetic_train_size: int = 2000  # synthetic task: training prompts
    synthetic_eval_size: int = 128  # synthetic task: held-out prompts
    reward_fn: str = "synthetic_arithmetic"  # synthetic_arithmetic | math | module:function
    reward_timeout_s: float = 5.0  # per-response verifier time limit; a timeout gives reward 0


@dataclass
class TrainerConfig:
    total_steps: int = 10  # RL steps
    output_dir: str = "outputs/run"  # metrics, TensorBoard, checkpoints, exported model
    seed: int = 1234  # seeds Python, NumPy, torch, Megatron's RNG tracker, the data order and sampling
    mini_batches: int = 1  # optimizer steps per RL step (the batch is split into this many mini-batches)
    ppo_epochs: int = 1  # passes over the rollout batch
    micro_batch_tokens: int = 4096  # token budget of one micro-batch (log-prob and update)
    packing: bool = True  # pack sequences (THD) into token-balanced micro-batches; false: padded rows
    eval_interval: int = 5  # evaluate every K steps (and at step 0 and the end); 0 = never
    eval_n: int = 4  # samples per eval prompt for pass@k
    eval_temperature: float = 1.0  # sampling temperature for pass@k (greedy accuracy is always measured)
    async_mode: str = "off"  # off | one_step_off (step k+1's rollout overlaps step k) | bounded (fed buffer)
    max_staleness: int = 1  # bounded: how many policy versions a consumed rollout may lag (older: dropped, regenerated)


@dataclass
class CheckpointConfig:
    interval: int = 0  # steps between checkpoints; 0 = only at the end and on preemption
    resume: str = "auto"  # auto | never | a checkpoint path
    keep_last: int = 2  # complete checkpoints kept
    async_save: bool = False  # megatron-core async dist-checkpoint save
    export_hf: bool = True  # export the final policy as an HF directory
    dir: str = ""  # "" = <output_dir>/checkpoints


@dataclass
class LoggingConfig:
    tensorboard: bool = True  # write TensorBoard events under <output_dir>/tb
    wandb_project: str = ""  # log to wandb when set (and installed)
    progress_bar: bool = True  # rich progress bar with step, reward, eval accuracy and ETA
    level: str = "INFO"  # Python logging level


@dataclass
class PavConfig:
    data_dir: str = "outputs/pav/data"  # `pav collect` output (Parquet shards + manifest.json)
    n_mc: int = 8  # continuations sampled after every step prefix to estimate its Q-hat (temperature 1)
    num_prompts: int = 64  # training prompts collected: the first ones of the prompt set, in file order
    samples_per_prompt: int = 1  # policy responses sampled per prompt (each gives one row per step)
    prompts_per_batch: int = 8  # prompts per engine batch and per Parquet shard (the unit of resume)
    prover: str = "bok"  # policy | bok: the prover mu whose progress A^mu is the process reward
    prover_k: int = 4  # K of the Best-of-K prover, Q^mu = 1 - (1 - Q^pi)^K (prover=bok)
    verifier_dir: str = "outputs/pav/verifier"  # `pav train` output (HF-style verifier dir, checkpoints/ inside); search input
    train_steps: int = 200  # verifier optimizer steps (optim.* sets lr, warm-up and schedule)
    batch_size: int = 16  # sampled responses (all their steps) per verifier optimizer step
    heldout_fraction: float = 0.1  # share of the collection's prompts held out for the verifier's eval metrics
    eval_interval: int = 50  # held-out BCE / Brier / AUC every K steps (and at the end); 0 = only at the end
    score_input: str = ""  # `pav score` input: JSONL rows of "prompt" and "response" (output: <stem>.scores.jsonl)
    splitter: str = "\\n"  # step splitter: \n (lines) | \n\n (paragraphs) | regex:<pattern> (steps end at matches)


@dataclass
class SearchConfig:
    beam_width: int = 4  # N: beam elements kept after every step
    candidates: int = 3  # C: next steps proposed per beam element per step
    alpha: float = 0.5  # candidates ranked by Q^pi + alpha * A^mu (mu = pav.prover)
    num_prompts: int = 32  # held-out prompts searched (the first ones of the test split / data.eval_path)
    output_dir: str = "outputs/pav/search"  # results.json (accuracy vs generated tokens) and results.png


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pav: PavConfig = field(default_factory=PavConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


CHOICES: dict[str, tuple] = {
    "model.reference_mode": ("swap", "separate"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.transformer_impl": ("local", "transformer_engine", "auto"),
    "model.fp8": (None, "e4m3", "hybrid"),
    "model.fp8_recipe": ("delayed", "tensorwise", "blockwise", "mxfp8"),
    "model.fp8_scope": ("logprobs", "all"),
    "rollout.engine": ("hf", "vllm", "sglang"),
    "rollout.mode": ("colocated", "server"),
    "rollout.dtype": ("float32", "bfloat16", "float16"),
    "rollout.weight_sync": ("auto", "tensors", "folder", "nccl"),
    "algo.estimator": ("spro", "grpo", "pav", "spro_balanced"),
    "algo.pav_source": ("verifier", "mc"),
    "algo.pav_prover": ("initial", "current"),
    "algo.baseline": ("mean", "leave_one_out"),
    "algo.loss_agg": ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"),
    "algo.kl_estimator": ("k1", "k2", "k3"),
    "algo.mis": (None, "token", "sequence"),
    "algo.old_logprobs": ("recompute", "engine"),
    "trainer.async_mode": ("off", "one_step_off", "bounded"),
    "optim.lr_schedule": ("constant", "linear", "cosine"),
    "data.source": ("synthetic", "file"),
    "data.synthetic_task": ("arithmetic", "chain"),
    "data.chat_template": ("auto", "never", "always"),
    "logging.level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "pav.prover": ("policy", "bok"),
}

# Fields that must be > 0 (or >= 0 where noted).
POSITIVE = (
    "parallel.tp", "parallel.pp", "parallel.cp", "parallel.ep", "rollout.n", "rollout.max_new_tokens",
    "rollout.temperature", "rollout.bucket_bytes", "data.prompts_per_step", "data.max_prompt_tokens",
    "trainer.total_steps", "trainer.mini_batches", "trainer.ppo_epochs", "trainer.micro_batch_tokens",
    "model.logprob_chunk_tokens", "checkpoint.keep_last", "algo.tis_cap", "algo.mis_low", "rollout.engine_tp", "pav.n_mc", "algo.pav_n_mc", "algo.pav_prover_k", "pav.num_prompts",
    "pav.samples_per_prompt", "pav.prompts_per_batch", "pav.prover_k", "pav.train_steps", "pav.batch_size",
    "search.beam_width", "search.candidates", "search.num_prompts",
)
NON_NEGATIVE = (
    "parallel.dp", "algo.beta", "algo.eps_low", "algo.eps_high", "algo.kl_coef", "algo.entropy_coef",
    "optim.lr", "optim.weight_decay", "optim.clip_grad", "optim.warmup_steps", "trainer.eval_interval",
    "checkpoint.interval", "trainer.max_staleness", "pav.eval_interval", "search.alpha", "algo.pav_alpha",
)
