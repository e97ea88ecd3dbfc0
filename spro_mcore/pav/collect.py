"""`spro-mcore pav collect`: sample responses from the policy, split them into steps, and estimate the Q of
every step prefix with n_mc continuations (temperature 1), scored by the training verifier.

One batch of prompts = two engine calls: the policy's responses, then every prefix of every response in one
`generate` (n = n_mc each). A continuation may use what the response limit leaves after its prefix
(rollout.max_new_tokens - prefix length), so Q-hat is the chance of a correct answer under the same length
limit as the response itself; the call asks for the longest budget and each continuation is cut to its own
(the first b tokens of a sample are a sample with limit b). Each batch becomes one Parquet shard
(`pav/dataset.py`), so a stopped collection resumes at the first missing shard with the same seeds.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from spro_mcore.algo.progress import bok_q, mc_q_hat
from spro_mcore.algo.step_split import canonical_splitter, splitter_pattern
from spro_mcore.algo.token_offsets import split_token_steps
from spro_mcore.config import load_config
from spro_mcore.config.schema import Config
from spro_mcore.errors import UserError
from spro_mcore.pav import dataset as ds
from spro_mcore.pav.prompts import load_prompt_set, prompt_set_id
from spro_mcore.rewards.scoring import score_responses
from spro_mcore.rollout.engine import EngineSpec, SamplingParams, build_engine

log = logging.getLogger("spro_mcore.pav")

# Batch b samples with seeds from trainer.seed + b * stride. Sample j of prompt i of an engine call gets seed
# + i * n + j (`SamplingParams.sample_seed`; vLLM seeds each of the n samples so), so one batch uses
# (responses + prefixes * n_mc) consecutive seeds: its responses first, then its continuations. Ranges must not
# overlap: vLLM gives two requests with one seed and one context the same tokens.
_SEED_STRIDE = 1 << 32  # far above any batch's (responses + prefixes * n_mc)


def batch_seed(seed: int, batch: int) -> int:
    return seed + batch * _SEED_STRIDE


def collect_batch(engine, tokenizer, reward_fn, prompts, first_index: int, *, samples_per_prompt: int, n_mc: int,
                  temperature: float, max_new_tokens: int, splitter, prover: str, prover_k: int, seed: int,
                  reward_timeout_s: float | None = None) -> list[dict]:
    """The rows of one batch of prompts (see `pav/dataset.py` for the columns)."""
    groups = engine.generate([p.input_ids for p in prompts], SamplingParams(
        n=samples_per_prompt, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed))

    def score(texts_items):
        texts = [t for t, _ in texts_items]
        items = [p for _, p in texts_items]
        return score_responses(reward_fn, texts, [p.answer for p in items], [p.metadata for p in items],
                               timeout_s=reward_timeout_s).rewards

    samples = [(i, j, s) for i, group in enumerate(groups) for j, s in enumerate(group)]
    outcomes = score([(tokenizer.decode(s.token_ids, skip_special_tokens=True), prompts[i]) for i, _, s in samples])
    rows, jobs = [], []  # jobs: (row, prefix, budget) of the prefixes that need continuations
    for (i, j, sample), outcome in zip(samples, outcomes):
        split = split_token_steps(sample.token_ids, tokenizer, splitter)
        ends = [0] + [end for _, end in split.spans]
        for h, end in enumerate(ends):
            prefix = list(sample.token_ids[:end])
            row = dict(prompt_index=first_index + i, sample_index=j, step=h, num_steps=split.num_steps,
                       prompt_token_ids=list(prompts[i].input_ids), prefix_token_ids=prefix, outcome=outcome,
                       response_tokens=len(sample.token_ids), continuation_tokens=0)
            if h == split.num_steps:  # the whole response: its outcome is its Q exactly
                row.update(q_hat=outcome, n_mc=0)
            else:
                jobs.append((row, prefix, max_new_tokens - len(prefix)))
            rows.append(row)
    if jobs:
        continuations = engine.generate(
            [list(prompts[row["prompt_index"] - first_index].input_ids) + prefix for row, prefix, _ in jobs],
            SamplingParams(n=n_mc, temperature=1.0, max_new_tokens=max(b for _, _, b in jobs),
                           seed=seed + len(prompts) * samples_per_prompt))  # after the responses' seeds
        texts = []
        for (row, prefix, budget), group in zip(jobs, continuations):
            cut = [s.token_ids[:budget] for s in group]
            row["continuation_tokens"] = sum(len(c) for c in cut)
            item = prompts[row["prompt_index"] - first_index]
            texts += [(tokenizer.decode(prefix + c, skip_special_tokens=True), item) for c in cut]
        rewards = score(texts)
        for k, (row, _, _) in enumerate(jobs):
            row.update(q_hat=mc_q_hat(rewards[k * n_mc:(k + 1) * n_mc]), n_mc=n_mc)
    for row in rows:
        row["q_prover"] = bok_q(row["q_hat"], prover_k) if prover == "bok" else row["q_hat"]
    return rows


def _manifest(cfg: Config, hf_dir: str) -> dict:
    p = cfg.pav
    return {
        "kind": "spro-mcore pav collection",
        "policy": str(Path(hf_dir).resolve()), "policy_fingerprint": ds.policy_fingerprint(hf_dir),
        "prover": p.prover, "prover_k": p.prover_k,
        "prover_description": f"BoK({p.prover_k}) of the policy" if p.prover == "bok" else "the policy",
        "splitter": canonical_splitter(p.splitter), "seed": cfg.trainer.seed, "n_mc": p.n_mc,
        "samples_per_prompt": p.samples_per_prompt, "prompts_per_batch": p.prompts_per_batch,
        "num_prompts": p.num_prompts, "temperature": cfg.rollout.temperature,
        "max_new_tokens": cfg.rollout.max_new_tokens, "prompt_set": prompt_set_id(cfg, "train"),
        "reward_fn": cfg.data.reward_fn, "engine": cfg.rollout.engine,
    }


def collect(cfg: Config) -> dict:
    """Run (or continue) the collection of `cfg.pav`; returns the generation cost of the whole collection."""
    from transformers import AutoTokenizer

    from spro_mcore.trainer.group_scorer import GroupScorer
    from spro_mcore.trainer.setup import resolve_model_path

    from spro_mcore.models.mcore_checkpoint import is_mcore_checkpoint

    model_path = resolve_model_path(cfg.model.path)
    if is_mcore_checkpoint(model_path):
        raise UserError(f"model.path={model_path} is a Megatron checkpoint: collection samples with an engine, "
                        f"which needs an HF directory (convert it with `spro-mcore convert mcore-to-hf`)")
    hf_dir = model_path
    p = cfg.pav
    data_dir = Path(p.data_dir)
    manifest = _manifest(cfg, hf_dir)
    ds.check_collection(data_dir, manifest)  # before anything is written there
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    reward_fn = GroupScorer(cfg.data.reward_fn, timeout_s=cfg.data.reward_timeout_s).fn
    prompts = load_prompt_set(cfg, tokenizer, data_dir / "prompts", split="train", count=p.num_prompts)
    done = set(ds.open_collection(data_dir, manifest))
    num_batches = -(-p.num_prompts // p.prompts_per_batch)
    todo = [b for b in range(num_batches) if b not in done]
    if done:
        log.info("pav collect: %d of %d shards already in %s; continuing", len(done & set(range(num_batches))),
                 num_batches, data_dir)
    if todo:
        max_prompt = max(len(item.input_ids) for item in prompts)
        engine = build_engine(EngineSpec.from_rollout_config(
            cfg.rollout, hf_dir, seed=cfg.trainer.seed, max_model_len=max_prompt + cfg.rollout.max_new_tokens))
        pattern = splitter_pattern(p.splitter)
        try:
            for b in todo:
                start = time.monotonic()
                first = b * p.prompts_per_batch
                rows = collect_batch(
                    engine, tokenizer, reward_fn, prompts[first:first + p.prompts_per_batch], first,
                    samples_per_prompt=p.samples_per_prompt, n_mc=p.n_mc, temperature=cfg.rollout.temperature,
                    max_new_tokens=cfg.rollout.max_new_tokens, splitter=pattern, prover=p.prover,
                    prover_k=p.prover_k, seed=batch_seed(cfg.trainer.seed, b), reward_timeout_s=cfg.data.reward_timeout_s)
                ds.write_shard(data_dir, b, rows)
                log.info("pav collect: shard %d/%d, %d rows, %.1f s", b + 1, num_batches, len(rows),
                         time.monotonic() - start)
        finally:
            engine.close()
    _, table = ds.read_collection(data_dir)
    stats = ds.generation_cost(table)
    ds.write_json_atomic(data_dir / ds.STATS, stats)
    return stats


def collect_main(config_path, overrides) -> int:
    cfg = load_config(config_path, overrides)
    logging.basicConfig(level=cfg.logging.level, format="%(asctime)s %(name)s: %(message)s")
    stats = collect(cfg)
    print("pav collect: " + json.dumps(stats) + f" -> {cfg.pav.data_dir}")
    print(f"pav collect: generation cost = continuation tokens / response tokens = "
          f"{stats['continuation_tokens']} / {stats['response_tokens']} = {stats['cost_ratio']:.2f}")
    return 0

