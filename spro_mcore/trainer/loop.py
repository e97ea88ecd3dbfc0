"""The step scheduler. `Trainer.step` reads top to bottom like the diagram in DESIGN.md:

    prompts -> engine.generate (n per prompt) -> rewards
            -> policy.logprobs (old) + reference.logprobs
            -> process reward (PAV: verifier pass or Monte-Carlo continuations; nothing for SPRO/GRPO)
            -> algo.advantages (GRPO outcome term + SPRO MSA, or + PAV progress)
            -> policy.update (PPO-clip, Megatron forward-backward + distributed optimizer)
            -> weight sync (Megatron shards -> HF-named tensors -> engine)

Parallel layout: every data-parallel replica takes its slice of the step's prompts. In each model-parallel
group (the TP x PP ranks of one replica) the first rank owns the rollout engine, generates and scores, and
hands the batch to the other ranks of its group; the Megatron passes then run on all of them. (Colocated
vLLM in a multi-rank job: every rank hosts an engine; the group's engines share the generation and the
first rank gets all of it, see rollout/engine_group.py.)
"""

from __future__ import annotations

import copy
import logging
import time

import torch

from spro_mcore.algo.registry import compute_advantages, estimator_options
from spro_mcore.config.schema import Config
from spro_mcore.parallel import collectives
from spro_mcore.parallel.distributed import Layout
from spro_mcore.rollout.engine import EngineError, SamplingParams
from spro_mcore.trainer.policy import Policy
from spro_mcore.trainer.evaluate import evaluate
from spro_mcore.trainer.metrics import MetricsLogger, StepTimer
from spro_mcore.trainer.process_reward import NoProcessReward
from spro_mcore.trainer.rollout_batch import RolloutBatch, build_rollout_batch
from spro_mcore.trainer.rollout_producer import Rollout, rollout_producer, env_test_hooks
from spro_mcore.trainer.setup import Components

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: Config, layout: Layout, parts: Components):
        self.cfg, self.layout, self.parts = cfg, layout, parts
        self.policy: Policy = parts.policy
        self.engine = parts.engine  # None on ranks that do not generate
        self.sleep_when_idle = cfg.rollout.sleep_when_idle and self.engine is not None
        self.step_no = parts.start_step
        self.process_reward = getattr(parts, "process_reward", None) or NoProcessReward()
        # the algo.* fields the chosen estimator takes (beta and baseline are SPRO's alone)
        self.estimator_options = {k: getattr(cfg.algo, k) for k in estimator_options(cfg.algo.estimator)}
        # trainer.async_mode: the overlap of generation with training lives in the producer alone
        self.producer = rollout_producer(
            self._produce, mode=cfg.trainer.async_mode, start_step=self.step_no, total_steps=cfg.trainer.total_steps,
            threaded=cfg.rollout.mode == "server", max_staleness=cfg.trainer.max_staleness, **env_test_hooks(),
        )
        self._data_states: dict[int, dict] = {}  # step -> the prompt iterator's state before its prompts were drawn

    # ---- one RL step, as in the diagram --------------------------------------------------------------
    def step(self) -> dict:
        cfg, timer = self.cfg, StepTimer()
        with timer("step"):
            with timer("rollout_wait"):  # generation (or, async, the wait for the prefetched batch)
                rollout = self.producer.next(self.step_no)
            batch = self._share_batch(rollout.batch)
            with timer("process_reward"):  # PAV's extra work (SPRO's and GRPO's: their advantage math below)
                process, process_metrics = self.process_reward(batch, rollout.prompts, self.step_no)
            if self.sleep_when_idle:  # the engine frees its memory for the Megatron passes
                with timer("engine_sleep"):
                    self.engine.sleep()

            with timer("logprob"):
                old_logprobs, entropy = self._old_logprobs(batch)
                ref_logprobs, _ = self.policy.logprobs(batch, reference=True)

            with timer("process_reward"):
                advantages, adv_metrics = compute_advantages(
                    cfg.algo.estimator, old_logprobs=self._behaviour_logprobs(batch, old_logprobs),
                    ref_logprobs=ref_logprobs,
                    response_mask=batch.response_mask, rewards=batch.rewards, group_ids=batch.group_ids,
                    process=process, **self.estimator_options,
                )

            with timer("update"):
                update_metrics = self.policy.update(batch, advantages, old_logprobs, ref_logprobs)

            if self.sleep_when_idle:  # back before the weight sync refills it
                with timer("engine_wake"):
                    self.engine.wake()
            with timer("rollout_wait"):  # async: the prefetch must end before the engine's weights change
                self.producer.before_weight_sync()
            with timer("weight_sync"):
                sync_metrics = self._sync_weights()
        self.step_no += 1
        self.producer.weights_synced(self.step_no)
        metrics = {**rollout.metrics, **process_metrics, **adv_metrics, **update_metrics, **sync_metrics, **timer.times}
        metrics.update(self._rollout_metrics(batch, old_logprobs, entropy))
        return self._mean_over_replicas(metrics)

    # ---- the pieces ----------------------------------------------------------------------------------
    def sampling(self, step: int) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(
            n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens,
            seed=self.cfg.trainer.seed * 1_000_003 + step * 7919 + self.layout.dp_rank * 104_729,
        )

    def _produce(self, step: int, version: int, prompts=None) -> Rollout:
        """The batch of `step`, sampled by the engine's current weights (`version`) and scored, from the next
        prompts (or `prompts`: a stale batch regenerated). Runs in the producer's thread with engine servers
        and in bounded mode: no collectives here (the loop shares the batch)."""
        timer = StepTimer()
        if prompts is None:
            self._data_states[step] = copy.deepcopy(self.parts.prompts.state_dict())
            prompts = self.parts.prompts.next_batch(self.layout)  # this replica's prompts of the step
        try:
            with timer("generate"):
                groups = self._generate(prompts, step)
            with timer("reward"):
                rewards, reward_metrics = self._score(prompts, groups)
            batch = self._build_batch(prompts, groups, rewards, step, version)
        except EngineError as e:  # the loop tells the rest of the model-parallel group, or they wait forever
            return Rollout(e, {}, version, prompts)
        return Rollout(batch, {**reward_metrics, **timer.times}, version, prompts, rows=len(batch) if batch else 0)

    def data_state(self, step: int) -> dict:
        """The prompt iterator's state a checkpoint of the boundary before `step` records: before the prompts
        of `step`, the next step to train. Prompts the producer drew ahead (a prefetched or buffered batch,
        lost with the process) are drawn again on resume and regenerated with the checkpointed weights
        (docs/ASYNC.md)."""
        now = copy.deepcopy(self.parts.prompts.state_dict())  # read first: the producer's thread may draw next
        for old in [s for s in list(self._data_states) if s < step]:  # list(): a snapshot the thread cannot change
            del self._data_states[old]
        return self._data_states.get(step, now)

    def _generate(self, prompts, step: int):
        if self.engine is None:
            return None
        return self.engine.generate([p.input_ids for p in prompts], self.sampling(step))

    def _score(self, prompts, groups):
        if groups is None:
            return None, {}
        texts = [[self.parts.tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in g] for g in groups]
        return self.parts.scorer.score_groups(texts, prompts)

    def _build_batch(self, prompts, groups, rewards, step: int, version: int) -> RolloutBatch | None:
        if groups is None:
            return None
        return build_rollout_batch(
            [p.input_ids for p in prompts], groups, rewards, pad_id=self.parts.pad_id,
            group_offset=(step * self.layout.dp + self.layout.dp_rank) * len(prompts), policy_version=version,
        )

    def _old_logprobs(self, batch: RolloutBatch):
        """pi_old of the batch's tokens: the trainer's recomputation (with the entropy), or, with
        algo.old_logprobs=engine, the engine's own log-probs of its samples (one forward pass fewer; the PPO
        ratio is then against the engine, and SPRO's process reward uses them too)."""
        if self.cfg.algo.old_logprobs == "engine":
            return batch.engine_logprobs * batch.response_mask, None
        return self.policy.logprobs(batch, with_entropy=True)

    def _behaviour_logprobs(self, batch: RolloutBatch, old_logprobs):
        """The log-probs of the policy that generated each sample, which SPRO's process reward
        r_t = beta * log(pi_b(y_t|s_t) / pi_ref(y_t|s_t)) takes (docs/ASYNC.md). A row sampled with this step's
        weights (staleness 0, always so with async_mode=off) has the trainer's recomputed pi_old as pi_b. A
        stale row (async) was sampled by an older version the trainer no longer holds: the engine's own
        log-probs are the only record of pi_b, and they enter r_t. (The PPO ratio keeps the recomputed pi_old,
        the proximal policy, corrected against the engine by TIS/MIS.)"""
        if batch.policy_version is None:
            return old_logprobs
        stale = batch.policy_version != self.step_no  # step_no: the version the trainer holds now
        if not bool(stale.any()):
            return old_logprobs
        return torch.where(stale.unsqueeze(1), batch.engine_logprobs * batch.response_mask, old_logprobs)

    def _share_batch(self, batch: RolloutBatch | EngineError | None) -> RolloutBatch:
        """The owner of the engine built the batch (or met an engine failure); the other ranks of its
        model-parallel group receive it, and all of them raise the failure together."""
        if self.layout.tp * self.layout.pp > 1:
            shared = collectives.broadcast_object(batch.to_dict() if isinstance(batch, RolloutBatch) else batch,
                                                  src_group_rank=0, group="mp")
            batch = RolloutBatch(**shared) if isinstance(shared, dict) else shared
        if isinstance(batch, EngineError):
            raise batch
        return batch

    def _sync_weights(self) -> dict:
        """Every rank takes part in the export (TP gathers, PP broadcasts); the engine owner loads it.
        (time/weight_sync, export included, comes from the step timer.)"""
        tensors = self.policy.export_weights(dtype=getattr(torch, self.cfg.rollout.dtype))
        if self.engine is None:
            for _ in tensors:  # drain: the collectives must run on every rank
                pass
            return {}
        stats = self.engine.update_weights(tensors)
        return {k: v for k, v in stats.metrics().items() if not k.startswith("time/")}

    def _rollout_metrics(self, batch: RolloutBatch, old_logprobs, entropy) -> dict:
        mask = batch.response_mask.float()
        n = mask.sum().clamp(min=1)
        out = {
            "reward/mean": batch.rewards.mean(),
            "reward/std": batch.rewards.std() if len(batch) > 1 else torch.tensor(0.0),
            "response_length/mean": batch.response_lens.float().mean(),
            "response_length/max": batch.response_lens.max().float(),
        }
        if batch.policy_version is not None:  # step_no already counts this step
            staleness = (self.step_no - 1 - batch.policy_version).float()
            out["rollout/staleness_mean"] = staleness.mean()
            out["rollout/staleness_max"] = staleness.max()
        if entropy is not None:  # else the update's entropy/mean stands (old_logprobs=engine: no old pass)
            out["entropy/mean"] = (entropy * mask).sum() / n
        if self.cfg.algo.old_logprobs == "recompute":  # engine: the gap is 0 by construction
            gap = (old_logprobs - batch.engine_logprobs).abs() * mask
            out["rollout/engine_logprob_abs_diff_mean"] = gap.sum() / n
            out["rollout/engine_logprob_abs_diff_max"] = gap.max()
        return out

    def _mean_over_replicas(self, metrics: dict) -> dict:
        """Average scalar metrics over data-parallel replicas (max for */max, sum for nothing else)."""
        out = {k: float(v) for k, v in metrics.items()}
        if self.layout.dp == 1:
            return out
        rows = collectives.all_gather_object(out, group="dp")
        merged = {}
        for k in out:
            vals = [r[k] for r in rows if k in r]
            merged[k] = max(vals) if k.endswith("/max") else sum(vals) / len(vals)
        return merged

    # ---- the run -------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """The first replica's engine(s) evaluate (every rank of its group where all host one); rank 0 reports."""
        if self.layout.dp_rank != 0 or self.engine is None:
            return {}
        metrics = evaluate(self.engine, self.parts.eval_prompts, self.parts.scorer, self.parts.tokenizer,
                           max_new_tokens=self.cfg.rollout.max_new_tokens, n=self.cfg.trainer.eval_n,
                           temperature=self.cfg.trainer.eval_temperature, seed=self.cfg.trainer.seed)
        return metrics if self.layout.is_main else {}

    def fit(self, logger: MetricsLogger, checkpointer=None) -> dict:
        cfg = self.cfg.trainer
        last = {}
        if self.step_no == 0 and cfg.eval_interval:
            logger.log(0, self.evaluate())
        try:
            while self.step_no < cfg.total_steps:
                metrics = self.step()
                step = self.step_no
                if cfg.eval_interval and (step % cfg.eval_interval == 0 or step == cfg.total_steps):
                    t0 = time.perf_counter()
                    metrics.update(self.evaluate())
                    metrics["time/eval"] = time.perf_counter() - t0
                last = logger.log(step, metrics)
                if checkpointer is not None:
                    checkpointer.maybe_save(self, step, metrics)
                    if checkpointer.stop_requested:  # preemption: on_preemption saves and exits
                        break
        finally:  # a generation in flight ends before the engine goes away
            self.producer.close()
        return last
