"""Megatron -> engine weight sync, end to end: a Megatron policy (TP=1 in one process, TP=2 in two gloo
processes, real megatron-core) is exported as HF-named tensors into an engine that started from other
weights; the log-probs the engine gives its own samples must then equal Megatron's log-probs of the same
tokens (`sequence_logprobs`, the trainer's computation) to 1e-4, and must NOT before the update.

Rank 0 owns the engine (as in the trainer); every rank takes part in the export and the log-prob pass.
TP=1: hf and vLLM colocated, tied and untied. TP=2: hf (tied, untied) and a vLLM OpenAI server (tied).
(Colocated vLLM on every rank of a TP=2 job, vLLM's external launcher: test_vllm_colocated_torchrun.py.)
Without vllm installed only the hf jobs run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest

from spro_mcore.parallel.distributed import free_port
from tests.multiproc import run_in_processes
from tests.rollout.server_process import running_server

pytestmark = [pytest.mark.dist, pytest.mark.engine]

TEMPERATURE = 0.8
HAS_VLLM = importlib.util.find_spec("vllm") is not None
LAUNCHER = Path(__file__).resolve().parents[2] / "launch" / "vllm_server.sh"


def _gaps(tp: int, jobs: list[dict]) -> list[dict]:
    import torch
    import torch.distributed as dist

    from spro_mcore.models import export_hf_weights, load_model, sequence_logprobs
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.rollout.engine import EngineSpec, SamplingParams, build_engine
    from tests.rollout.rollout_helpers import long_prompts

    initialize_model_parallel(tp, 1)
    rank = dist.get_rank()
    prompts = long_prompts()
    sampling = SamplingParams(n=2, temperature=TEMPERATURE, max_new_tokens=12, seed=3)

    def megatron_gap(chunks, groups) -> float:
        """max |engine - Megatron| log-prob over all sampled tokens (collective: rank 0's samples go to all)."""
        box = [[[(s.token_ids, s.logprobs) for s in g] for g in groups] if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        rows = [(p, toks, lps) for p, g in zip(prompts, box[0]) for toks, lps in g]
        width = max(len(p) + len(t) for p, t, _ in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        engine_lp = torch.zeros(len(rows), max(len(t) for _, t, _ in rows))
        for i, (p, toks, lps) in enumerate(rows):
            ids[i, : len(p) + len(toks)] = torch.tensor(p + toks)
            engine_lp[i, : len(toks)] = torch.tensor(lps)
        lp, _ = sequence_logprobs(chunks, ids, [len(p) for p, _, _ in rows], [len(t) for _, t, _ in rows],
                                  temperature=TEMPERATURE, micro_batch_size=2)
        mask = torch.zeros_like(engine_lp, dtype=torch.bool)
        for i, (_, toks, _) in enumerate(rows):
            mask[i, : len(toks)] = True
        return ((lp - engine_lp).abs() * mask).max().item()

    out = []
    for job in jobs:
        chunks, arch = load_model(job["policy"])
        engine = build_engine(EngineSpec(**job["spec"])) if rank == 0 else None
        before = engine.generate(prompts, sampling) if rank == 0 else None
        stale = megatron_gap(chunks, before)
        stream = export_hf_weights(chunks, arch, bucket_bytes=300_000)
        if rank == 0:
            engine.update_weights(stream)
        else:
            for _ in stream:  # the export is collective
                pass
        after = engine.generate(prompts, sampling) if rank == 0 else None
        fresh = megatron_gap(chunks, after)
        if engine is not None:
            engine.close()
        out.append({"job": job["name"], "stale": stale, "fresh": fresh})
    return out


def _job(name, tiny_models, tied, **spec):
    return {"name": name, "policy": str(tiny_models[(tied, "b")]),
            "spec": {"model_path": str(tiny_models[(tied, "a")]), **spec}}


def _check(results):
    for r in results:
        assert r["fresh"] <= 1e-4, r
        assert r["stale"] > 0.5, r  # the engine's old weights are visibly wrong for the policy


def test_tp1_hf_and_vllm_colocated(tiny_models):
    vllm = dict(backend="vllm", kv_cache_memory_bytes=64 << 20, max_model_len=1024)
    jobs = [_job(f"{b}-{'tied' if t else 'untied'}", tiny_models, t, **(vllm if b == "vllm" else {"backend": "hf"}))
            for b in (("hf", "vllm") if HAS_VLLM else ("hf",)) for t in (True, False)]
    results = run_in_processes(_gaps, 1, 1, jobs, timeout=400)[0]
    assert [r["job"] for r in results] == [j["name"] for j in jobs]
    _check(results)


def test_tp2_hf_and_vllm_server(tiny_models, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(PYTHON=sys.executable, SPRO_VLLM_DTYPE="float32", SPRO_VLLM_KV_CACHE_BYTES=str(64 << 20),
               SPRO_VLLM_MAX_MODEL_LEN="1024")
    jobs = [_job("hf-tied", tiny_models, True, backend="hf"), _job("hf-untied", tiny_models, False, backend="hf")]
    server = contextlib.nullcontext()
    if HAS_VLLM:
        jobs.append(_job("vllm-server-tied", tiny_models, True, backend="vllm", mode="server", server_urls=[url],
                         weight_sync_dir=str(tmp_path / "weights")))
        server = running_server(["bash", str(LAUNCHER), str(tiny_models[(True, "a")]), str(port), "127.0.0.1"],
                                url, tmp_path / "server.log", env)
    with server:
        results = run_in_processes(_gaps, 2, 2, jobs, timeout=400)
    for per_rank in results:  # every rank took part in the log-prob pass and got the same answer
        assert [r["job"] for r in per_rank] == [j["name"] for j in jobs]
        _check(per_rank)
