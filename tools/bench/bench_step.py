"""Benchmark: one full training step (hf engine, the shipped tiny base, one process) broken into phases, and
the ratios that matter, all measured side by side in this run (absolute times on shared machines are not
comparable across runs):

1. Phases of a step: generate, reward, log-prob (old), reference, advantage, update, weight sync.
2. SPRO step time / GRPO step time on identical rollouts (one generated batch, the Megatron phases and the
   advantage timed for each estimator, interleaved, best of N; generate and reward are shared).
   Goal <= 1.01: SPRO's process reward adds no overhead.
3. Advantage time as a fraction of the step.
4. Packed + token-balanced vs padded micro-batches (trainer.packing) on a length-skewed batch (lengths drawn
   like RL responses: many short, a long tail): log-prob and update tokens/s (real tokens), and the share
   of padded (wasted) tokens the model runs over, before and after.

    python tools/bench/bench_step.py [--prompts 8] [--n 8] [--max-new-tokens 48] [--repeats 7]
                                     [--skewed-batch 64] [--budget 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _best(fns: dict, repeats: int) -> dict:
    """Interleaved repeats, best of N seconds per name."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def _trainer(overrides: list[str]):
    from spro_mcore.config import load_config
    from spro_mcore.parallel import initialize_model_parallel, seed_everything
    from spro_mcore.parallel.distributed import init_process_group
    from spro_mcore.trainer.loop import Trainer
    from spro_mcore.trainer.setup import build_components

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart_cpu.yaml"),
                      overrides)
    init_process_group(cfg.parallel.timeout_minutes)
    layout = initialize_model_parallel(1, 1)
    seed_everything(cfg.trainer.seed)
    return Trainer(cfg, layout, build_components(cfg, layout))


def bench_phases(a) -> None:
    from spro_mcore.algo.registry import compute_advantages, estimator_options

    out = tempfile.mkdtemp(prefix="bench_step_")
    tr = _trainer([f"trainer.output_dir={out}", f"data.prompts_per_step={a.prompts}", f"rollout.n={a.n}",
                   f"rollout.max_new_tokens={a.max_new_tokens}", "logging.progress_bar=false",
                   "logging.tensorboard=false", "data.synthetic_eval_size=8"])
    actor, cfg = tr.policy, tr.cfg
    prompts = tr.parts.prompts.next_batch(tr.layout)
    t0 = time.perf_counter()
    groups = tr._generate(prompts, tr.step_no)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewards, _ = tr._score(prompts, groups)
    t_rew = time.perf_counter() - t0
    batch = tr._build_batch(prompts, groups, rewards, tr.step_no, tr.step_no)
    old, _ = actor.logprobs(batch, with_entropy=True)
    ref, _ = actor.logprobs(batch, reference=True)

    def adv(est):
        opts = {k: getattr(cfg.algo, k) for k in estimator_options(est)}
        return lambda: compute_advantages(est, old_logprobs=old, ref_logprobs=ref, response_mask=batch.response_mask,
                                          rewards=batch.rewards, group_ids=batch.group_ids, **opts)[0]

    advs = {est: adv(est)() for est in ("spro", "grpo")}
    fns = {
        "log-prob": lambda: actor.logprobs(batch, with_entropy=True),
        "reference": lambda: actor.logprobs(batch, reference=True),
        "advantage spro": adv("spro"), "advantage grpo": adv("grpo"),
        # the update's cost does not depend on the advantages' values: one estimator's each, interleaved
        "update spro": lambda: actor.update(batch, advs["spro"], old, ref),
        "update grpo": lambda: actor.update(batch, advs["grpo"], old, ref),
        "weight sync": tr._sync_weights,
    }
    t = _best(fns, a.repeats)
    shared = t_gen + t_rew + t["log-prob"] + t["reference"] + t["weight sync"]
    step = {e: shared + t[f"advantage {e}"] + t[f"update {e}"] for e in ("spro", "grpo")}
    tokens = int(batch.total_lens.sum())
    print(f"\n[step] tiny base, hf engine, {len(batch)} sequences ({a.prompts} prompts x {a.n}), {tokens} tokens, "
          f"packing={cfg.trainer.packing}; best of {a.repeats} (generate/reward once)")
    rows = [("generate", t_gen), ("reward", t_rew), ("log-prob", t["log-prob"]), ("reference", t["reference"]),
            ("advantage (spro)", t["advantage spro"]), ("update (spro)", t["update spro"]),
            ("weight sync", t["weight sync"])]
    for name, s in rows:
        print(f"  {name:18s} {s * 1e3:9.1f} ms   {100 * s / step['spro']:5.1f}% of the SPRO step")
    print(f"  SPRO step / GRPO step (identical rollouts)   {step['spro'] / step['grpo']:.4f}   (goal <= 1.01)")
    print(f"  advantage / step: SPRO {t['advantage spro'] / step['spro']:.2e}   GRPO "
          f"{t['advantage grpo'] / step['grpo']:.2e}")
    if tr.engine is not None:
        tr.engine.close()


def skewed_lengths(n: int, max_len: int, seed: int = 0) -> list[int]:
    """Response lengths like RL rollouts: most short, a long tail up to the limit (lognormal, clipped)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(torch.randn(n, generator=g) * 1.0 + 2.8)
    return x.round().clamp(1, max_len).long().tolist()


def bench_packing(a) -> None:
    from spro_mcore.config.schema import Config
    from spro_mcore.models.logprobs import build_packs
    from spro_mcore.parallel.distributed import layout as current_layout
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy
    from spro_mcore.trainer.micro_batches import split_even
    from spro_mcore.trainer.rollout_batch import RolloutBatch
    from spro_mcore.trainer.setup import resolve_model_path

    cfg = Config()
    cfg.model.transformer_impl = "local"
    cfg.trainer.micro_batch_tokens = a.budget
    cfg.rollout.max_new_tokens = a.max_response
    path = resolve_model_path("builtin:tiny_base")
    actor = MegatronPolicy(cfg, current_layout(), path, path, total_updates=10 * a.repeats)
    g = torch.Generator().manual_seed(1)
    r = torch.tensor(skewed_lengths(a.skewed_batch, a.max_response))
    p = torch.randint(8, 24, (len(r),), generator=g)
    L, T = int((p + r).max()), int(r.max())
    vocab = actor.arch.vocab_size
    batch = RolloutBatch(input_ids=torch.randint(0, vocab, (len(r), L), generator=g), prompt_lens=p,
                         response_lens=r, response_mask=torch.arange(T)[None] < r[:, None],
                         engine_logprobs=torch.zeros(len(r), T), rewards=torch.zeros(len(r)),
                         group_ids=torch.arange(len(r)) // 8)
    adv = torch.randn(len(r), T, generator=g) * batch.response_mask
    real = int(batch.total_lens.sum())

    def run_tokens(packing: bool) -> int:
        """Tokens the model runs over (padding included) for one pass over the batch."""
        total = 0
        for rows in split_even(len(batch), cfg.trainer.mini_batches):
            idx = torch.tensor(list(rows))
            if packing:
                micro, pack_len = build_packs(actor.model, batch.input_ids[idx], batch.prompt_lens[idx],
                                              batch.response_lens[idx], actor.packs(batch, idx))
                total += len(micro) * pack_len
            else:
                mbs = actor.micro_batch_size(batch)
                total += -(-len(idx) // mbs) * mbs * L
        return total

    def mode(packing: bool):
        def logprob():
            cfg.trainer.packing = packing
            return actor.logprobs(batch)

        def update():
            cfg.trainer.packing = packing
            lp, _ = actor.logprobs(batch)
            t0 = time.perf_counter()
            actor.update(batch, adv, lp, lp)
            return time.perf_counter() - t0
        return logprob, update

    (lp_pad, up_pad), (lp_pack, up_pack) = mode(False), mode(True)
    t = _best({"log-prob padded": lp_pad, "log-prob packed": lp_pack}, a.repeats)
    upd = {"padded": [], "packed": []}
    for _ in range(a.repeats):
        upd["padded"].append(up_pad())
        upd["packed"].append(up_pack())
    u = {k: min(v) for k, v in upd.items()}
    tok = {k: run_tokens(k == "packed") for k in ("padded", "packed")}
    print(f"\n[packing] {len(r)} sequences, responses {min(r.tolist())}..{max(r.tolist())} tokens (median "
          f"{int(r.median())}), {real} real tokens, micro_batch_tokens={a.budget}")
    for k in ("padded", "packed"):
        print(f"  {k:7s} log-prob {real / t[f'log-prob {k}']:8.0f} tok/s   update {real / u[k]:8.0f} tok/s   "
              f"model runs over {tok[k]:6d} tokens, padded fraction {1 - real / tok[k]:.3f}")
    print(f"  packed / padded: log-prob throughput {t['log-prob padded'] / t['log-prob packed']:.2f}x   "
          f"update throughput {u['padded'] / u['packed']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--skewed-batch", type=int, default=64, help="sequences in the packing comparison")
    p.add_argument("--max-response", type=int, default=200, help="response length limit of the skewed batch")
    p.add_argument("--budget", type=int, default=1024, help="micro_batch_tokens of the packing comparison")
    p.add_argument("--skip-step", action="store_true")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        from spro_mcore.parallel.distributed import free_port

        os.environ["MASTER_PORT"] = str(free_port())
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    if not a.skip_step:
        bench_phases(a)
    else:
        _trainer_free_init()
    bench_packing(a)


def _trainer_free_init() -> None:
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.parallel.distributed import init_process_group

    init_process_group(30)
    initialize_model_parallel(1, 1)


if __name__ == "__main__":
    main()
