"""The process reward phase of a step: what an estimator needs beyond the batch, and what it cost.

    process, metrics = process_reward(batch, prompts, step)    # one call in Trainer.step, timed as time/process_reward

- `NoProcessReward` (grpo, spro): nothing beyond the batch (SPRO's process reward is the policy's own
  log-probs, already computed); its cost metrics are 0.
- `VerifierProcessReward` (pav, algo.pav_source=verifier): the trained PAV verifier, a frozen megatron-core
  model in the same TP/PP layout as the policy, one forward-only pass per response (micro-batched by
  trainer.micro_batch_tokens) giving Q^pi at the prompt's last token and at every step's last token.
- `MonteCarloProcessReward` (pav, algo.pav_source=mc): Q-hat^pi of every step prefix from algo.pav_n_mc
  continuations, all prefixes in one batched engine call on the rank that owns the engine (shared with the
  rest of its model-parallel group). The continuations come from the frozen initial policy (algo.pav_prover=
  initial: a second, embedded hf engine on model.path that never receives weight updates) or from the
  current policy (algo.pav_prover=current: the rollout engine itself); the last step's Q-hat is the response's own
  outcome and V(prompt) is its group's mean outcome (rollout.n samples of the same policy from the prompt).
Either way the estimator gets tensors: step_index [B, T], step_q [B, S] (Q^pi after each step), prompt_value [B];
the Best-of-K prover (algo.pav_prover_k) and the progress differences are applied in `algo/pav_advantages.py`.

Cost metrics: pav/verifier_tokens (tokens through the verifier), pav/prover_tokens (continuation tokens
generated), pav/prover_prefixes; the policy's own rollout tokens are response_length/mean x samples.
"""

from __future__ import annotations

import torch

from spro_mcore.algo.token_offsets import split_token_steps
from spro_mcore.parallel import collectives
from spro_mcore.rollout.engine import EngineError, SamplingParams

COST_KEYS = ("pav/verifier_tokens", "pav/prover_tokens", "pav/prover_prefixes")


def _zero_cost() -> dict:
    return {k: 0.0 for k in COST_KEYS}


class NoProcessReward:
    """grpo / spro: the estimator needs nothing beyond the batch."""

    def __call__(self, batch, prompts, step: int) -> tuple[dict, dict]:
        return {}, _zero_cost()


def step_layout(batch, tokenizer, splitter: str):
    """The steps of every response: (step_index [B, T], spans per row as lists of (start, end) token ranges)."""
    b, t = batch.response_mask.shape
    step_index = torch.zeros(b, t, dtype=torch.long)
    spans = []
    for i in range(b):
        p, n = int(batch.prompt_lens[i]), int(batch.response_lens[i])
        ids = batch.input_ids[i, p:p + n].tolist()
        split = split_token_steps(ids, tokenizer, splitter)
        step_index[i, :n] = torch.tensor(split.step_of_token, dtype=torch.long)
        spans.append(list(split.spans))
    return step_index, spans


class VerifierProcessReward:
    """Q^pi per step from the trained verifier (frozen, forward-only, the policy's parallel layout)."""

    def __init__(self, cfg, tokenizer):
        from spro_mcore.pav.verifier import build_verifier, read_verifier_config

        info = read_verifier_config(cfg.algo.pav_path)
        self.splitter = info["splitter"]
        self.tokenizer = tokenizer
        self.token_budget = cfg.trainer.micro_batch_tokens
        self.chunks, _, _ = build_verifier(cfg.algo.pav_path, cfg.model)
        for c in self.chunks:
            c.eval()
            for prm in c.parameters():
                prm.requires_grad_(False)

    def __call__(self, batch, prompts, step: int) -> tuple[dict, dict]:
        from spro_mcore.pav.verifier import predict_logits

        step_index, spans = step_layout(batch, self.tokenizer, self.splitter)
        b, length = batch.input_ids.shape
        s = max(len(sp) for sp in spans)
        read_pos = torch.zeros(b, s + 1, dtype=torch.long)
        read_mask = torch.zeros(b, s + 1, dtype=torch.bool)
        for i, sp in enumerate(spans):
            p = int(batch.prompt_lens[i])
            read_pos[i, :len(sp) + 1] = torch.tensor([p - 1] + [p + end - 1 for _, end in sp])
            read_mask[i, :len(sp) + 1] = True
        mbs = max(1, min(b, self.token_budget // max(length, 1)))
        logits = predict_logits(self.chunks, {"input_ids": batch.input_ids, "read_pos": read_pos,
                                              "read_mask": read_mask}, micro_batch_size=mbs)
        q = torch.sigmoid(logits.double()).cpu()
        q = torch.where(read_mask, q, torch.zeros((), dtype=q.dtype))
        process = {"step_index": step_index, "step_q": q[:, 1:].float(), "prompt_value": q[:, 0].float()}
        cost = _zero_cost()
        cost["pav/verifier_tokens"] = float(batch.total_lens.sum())
        return process, cost


class MonteCarloProcessReward:
    """Q-hat^pi per step prefix from algo.pav_n_mc continuations of `engine` (the prover's base policy)."""

    def __init__(self, cfg, layout, tokenizer, engine, scorer):
        self.cfg, self.layout, self.tokenizer, self.engine, self.scorer = cfg, layout, tokenizer, engine, scorer
        self.splitter = cfg.algo.pav_splitter or "\\n"

    def sampling(self, step: int) -> SamplingParams:
        r = self.cfg.rollout
        # a seed of its own per step and replica (the step number is checkpointed, so resume is exact)
        return SamplingParams(n=self.cfg.algo.pav_n_mc, temperature=1.0, top_p=1.0, top_k=-1,
                              max_new_tokens=r.max_new_tokens,
                              seed=self.cfg.trainer.seed * 1_000_033 + step * 6007 + self.layout.dp_rank * 91_711 + 17)

    def __call__(self, batch, prompts, step: int) -> tuple[dict, dict]:
        result = None
        if self.engine is not None:
            try:
                result = self._estimate(batch, prompts, step)
            except EngineError as e:
                result = e
        if self.layout.tp * self.layout.pp > 1:  # the engine's owner shares the estimates with its group
            result = collectives.broadcast_object(result, src_group_rank=0, group="mp")
        if isinstance(result, EngineError):
            raise result
        return result

    def _estimate(self, batch, prompts, step: int) -> tuple[dict, dict]:
        step_index, spans = step_layout(batch, self.tokenizer, self.splitter)
        b = len(batch)
        s = max(len(sp) for sp in spans)
        first_group = int(batch.group_ids.min())
        rewards = batch.rewards.double()
        # every step prefix but the last (whose Q-hat is the response's own outcome), in one engine call
        prefixes, owners = [], []
        for i, sp in enumerate(spans):
            p = int(batch.prompt_lens[i])
            for h, (_, end) in enumerate(sp[:-1]):
                prefixes.append(batch.input_ids[i, :p + end].tolist())
                owners.append((i, h))
        step_q = torch.zeros(b, s, dtype=torch.float64)
        for i, sp in enumerate(spans):
            step_q[i, len(sp) - 1] = rewards[i]
        prover_tokens = 0
        if prefixes:
            groups = self.engine.generate(prefixes, self.sampling(step))
            texts, items = [], []
            for (i, h), prefix, samples in zip(owners, prefixes, groups, strict=True):
                p = int(batch.prompt_lens[i])
                head = prefix[p:]
                texts.append([self.tokenizer.decode(head + list(x.token_ids), skip_special_tokens=True)
                              for x in samples])
                items.append(prompts[int(batch.group_ids[i]) - first_group])
                prover_tokens += sum(len(x.token_ids) for x in samples)
            scores, _ = self.scorer.score_groups(texts, items)
            for (i, h), sc in zip(owners, scores):
                step_q[i, h] = sum(sc) / len(sc)
        # V(prompt): the group's mean outcome (rollout.n samples of the current policy from the prompt)
        index = batch.group_ids - first_group
        sums = torch.zeros(int(index.max()) + 1, dtype=torch.float64).index_add_(0, index, rewards)
        counts = torch.zeros_like(sums).index_add_(0, index, torch.ones_like(rewards))
        prompt_value = (sums / counts)[index]
        process = {"step_index": step_index, "step_q": step_q.float(), "prompt_value": prompt_value.float()}
        cost = _zero_cost()
        cost["pav/prover_tokens"] = float(prover_tokens)
        cost["pav/prover_prefixes"] = float(len(prefixes))
        return process, cost


def build_process_reward(cfg, layout, *, tokenizer, engine, scorer, initial_engine=None):
    """The process reward phase for algo.estimator (and algo.pav_source, algo.pav_prover). `initial_engine()`
    builds the frozen initial policy's engine (called only where this rank owns the rollout engine)."""
    if cfg.algo.estimator != "pav":
        return NoProcessReward()
    if cfg.algo.pav_source == "verifier":
        return VerifierProcessReward(cfg, tokenizer)
    if cfg.algo.pav_prover == "initial" and engine is not None:
        engine = initial_engine()
    return MonteCarloProcessReward(cfg, layout, tokenizer, engine, scorer)
