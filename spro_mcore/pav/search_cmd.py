"""`spro-mcore search`: PAV beam search against best-of-N (outcome verifier) and majority vote on held-out
prompts, at comparable numbers of generated tokens; writes <search.output_dir>/results.json and results.png.

Baselines sample M responses per prompt from the policy (rollout.temperature) for M = 1, 2, 4, ... until
they have generated at least as many tokens as the search (M = 1 is plain sampling). Best-of-M picks the
response whose final state the verifier rates highest (its reading at the last token is the outcome
verifier); majority vote picks the most frequent final line (ties: the first sampled). Accuracy is the
training reward of the picked response (>= 1 counts as correct), averaged over prompts.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch

from spro_mcore.algo.step_split import canonical_splitter, splitter_pattern
from spro_mcore.config import load_config
from spro_mcore.config.schema import Config
from spro_mcore.errors import UserError

log = logging.getLogger("spro_mcore.pav")
CORRECT = 1.0 - 1e-6
MAX_BASELINE_N = 64


def make_verifier_q(models, micro_batch_size: int = 16):
    from spro_mcore.pav.batches import Response, make_batch
    from spro_mcore.pav.verifier import predict_logits

    def verifier_q(seqs: list[list[int]], reads: list[list[int]]) -> list[list[float]]:
        responses = [Response(i, 0, list(s), list(r), [0.0] * len(r), 0.0) for i, (s, r) in enumerate(zip(seqs, reads))]
        batch = make_batch(responses, length=max(len(s) for s in seqs), steps=max(len(r) for r in reads))
        q = torch.sigmoid(predict_logits(models, batch, micro_batch_size=min(micro_batch_size, len(seqs))))
        return [q[i, :len(r)].tolist() for i, r in enumerate(reads)]

    return verifier_q


def final_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_search(cfg: Config) -> list[dict]:
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from spro_mcore.pav.beam_search import beam_search, line_break_token_ids
    from spro_mcore.pav.dataset import policy_fingerprint
    from spro_mcore.pav.prompts import load_prompt_set
    from spro_mcore.pav.verifier import load_verifier, read_verifier_config
    from spro_mcore.rewards.scoring import score_responses
    from spro_mcore.rollout.engine import EngineSpec, SamplingParams, build_engine
    from spro_mcore.trainer.group_scorer import GroupScorer
    from spro_mcore.trainer.setup import resolve_model_path

    s, p = cfg.search, cfg.pav
    policy = resolve_model_path(cfg.model.path)
    info = read_verifier_config(p.verifier_dir)
    if info.get("base_policy_fingerprint") != policy_fingerprint(policy):
        raise UserError(f"the verifier in {p.verifier_dir} was trained for the policy {info.get('base_policy')}, "
                        f"not model.path={cfg.model.path}")
    if info.get("splitter") != canonical_splitter(p.splitter):
        raise UserError(f"the verifier in {p.verifier_dir} reads steps split by {info.get('splitter')}, "
                        f"not pav.splitter={canonical_splitter(p.splitter)}")
    if dist.is_initialized() and dist.get_world_size() > 1:
        raise UserError("spro-mcore search runs in one process (the engine and the verifier side by side); "
                        "run it without torchrun")
    tokenizer = AutoTokenizer.from_pretrained(policy)
    items = load_prompt_set(cfg, tokenizer, Path(s.output_dir) / "prompts", split="test", count=s.num_prompts)
    prompts = [list(it.input_ids) for it in items]
    reward_fn = GroupScorer(cfg.data.reward_fn, timeout_s=cfg.data.reward_timeout_s).fn
    chunks, _, _ = load_verifier(p.verifier_dir, cfg.model)
    verifier_q = make_verifier_q(chunks)
    engine = build_engine(EngineSpec.from_rollout_config(
        cfg.rollout, policy, seed=cfg.trainer.seed,
        max_model_len=max(len(x) for x in prompts) + cfg.rollout.max_new_tokens))

    def accuracy(responses: list[list[int]]) -> float:
        texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        rewards = score_responses(reward_fn, texts, [it.answer for it in items], [it.metadata for it in items],
                                  timeout_s=cfg.data.reward_timeout_s).rewards
        return sum(r >= CORRECT for r in rewards) / len(rewards)

    line_based = p.splitter in ("\n", "\\n", "\n\n", "\\n\\n")
    try:
        results = beam_search(
            engine, tokenizer, verifier_q, prompts, beam_width=s.beam_width, candidates=s.candidates, alpha=s.alpha,
            prover=p.prover, prover_k=p.prover_k, max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature, splitter=splitter_pattern(p.splitter), seed=cfg.trainer.seed,
            step_stop_ids=line_break_token_ids(tokenizer) if line_based else None)
        search_tokens = sum(r.generated_tokens for r in results)
        rows = [{"method": "pav_beam_search", "accuracy": accuracy([r.tokens for r in results]),
                 "generated_tokens": search_tokens, "beam_width": s.beam_width, "candidates": s.candidates,
                 "alpha": s.alpha}]
        # baselines: M samples per prompt, doubling M until the search's token count is reached
        samples: list[list] = [[] for _ in prompts]
        m, drawn = 1, 0
        while True:
            # M = 1 is plain sampling with the seed of the search's first rollouts
            groups = engine.generate(prompts, SamplingParams(
                n=m - drawn, temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                seed=cfg.trainer.seed if m == 1 else cfg.trainer.seed + 10_000_019 * m))
            for i, g in enumerate(groups):
                samples[i] += [x.token_ids for x in g]
            drawn = m
            tokens = sum(len(t) for g in samples for t in g)
            finals = verifier_q([prompts[i] + t for i, g in enumerate(samples) for t in g],
                                [[len(prompts[i]) + len(t) - 1] for i, g in enumerate(samples) for t in g])
            k, best, vote = 0, [], []
            for i, g in enumerate(samples):
                qs = [finals[k + j][0] for j in range(len(g))]
                k += len(g)
                best.append(g[max(range(len(g)), key=lambda j: (qs[j], -j))])
                lines = [final_line(tokenizer.decode(t, skip_special_tokens=True)) for t in g]
                top = Counter(lines).most_common(1)[0][1]
                vote.append(g[next(j for j, ln in enumerate(lines) if Counter(lines)[ln] == top)])
            rows.append({"method": "best_of_n", "n": m, "accuracy": accuracy(best), "generated_tokens": tokens})
            rows.append({"method": "majority_vote", "n": m, "accuracy": accuracy(vote), "generated_tokens": tokens})
            if tokens >= search_tokens or m >= MAX_BASELINE_N:
                break
            m *= 2
    finally:
        engine.close()
    return rows


def write_report(rows: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, style in (("best_of_n", "o-"), ("majority_vote", "s--")):
        pts = [(r["generated_tokens"], r["accuracy"]) for r in rows if r["method"] == method]
        ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=method)
    beam = [r for r in rows if r["method"] == "pav_beam_search"]
    ax.plot([r["generated_tokens"] for r in beam], [r["accuracy"] for r in beam], "r*", markersize=12,
            label="PAV beam search")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "results.png", dpi=100)
    plt.close(fig)


def search_main(config_path, overrides) -> int:
    from spro_mcore.parallel import destroy
    from spro_mcore.pav.verifier import read_verifier_config
    from spro_mcore.trainer.run import start

    cfg = load_config(config_path, overrides)
    read_verifier_config(cfg.pav.verifier_dir)  # refuse a missing verifier before anything starts
    cfg, layout = start(config_path, overrides)
    try:
        rows = run_search(cfg)
    finally:
        destroy()
    write_report(rows, Path(cfg.search.output_dir))
    print(f"{'method':<18}{'n':>4}{'accuracy':>10}{'generated tokens':>18}")
    for r in rows:
        print(f"{r['method']:<18}{r.get('n', ''):>4}{r['accuracy']:>10.3f}{r['generated_tokens']:>18}")
    print(f"search: -> {Path(cfg.search.output_dir) / 'results.json'}")
    return 0
