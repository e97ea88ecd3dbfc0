"""EngineGroup: the engines of a model-parallel group share its prompts and act as one engine.

Unit: which ranks form which engine, and the prompt shares. Two gloo processes with a real hf engine on each
rank: the shared generation equals one engine generating every prompt (same seeds per prompt), only the
group's first rank gets the result, and an engine failure on one rank (bad prompt, broken weight update
mid-stream) is raised on both ranks instead of leaving one waiting in a collective.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spro_mcore.rollout.engine import EngineError
from spro_mcore.rollout.engine_group import engine_layout, shares
from tests.multiproc import run_in_processes

pytestmark = pytest.mark.unit


def test_engines_are_consecutive_ranks_inside_the_group():
    # TP=2 x PP=2 x DP=2 on 8 ranks: replica 0's model-parallel group is ranks 0, 1, 4, 5
    assert [engine_layout([0, 1, 4, 5], r, 2) for r in (0, 1, 4, 5)] == [(2, 0), (2, 0), (2, 1), (2, 1)]
    assert [engine_layout([0, 1, 4, 5], r, 1) for r in (0, 1, 4, 5)] == [(4, 0), (4, 1), (4, 2), (4, 3)]
    assert engine_layout([2, 3], 3, 2) == (1, 0)
    with pytest.raises(EngineError, match="would span model-parallel groups"):
        engine_layout([0, 1, 4, 5], 0, 4)
    with pytest.raises(EngineError, match="would span model-parallel groups"):
        engine_layout([0], 0, 2)  # TP=1: an engine of two ranks would take another replica's rank


def test_shares_are_contiguous_and_balanced():
    assert shares(3, 2) == [(0, 2), (2, 3)]
    assert shares(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert shares(1, 3) == [(0, 1), (1, 1), (1, 1)]


def _group(model_path: str, prompts: list[list[int]], bad_prompts: list[list[int]]) -> dict:
    import torch
    import torch.distributed as dist

    from spro_mcore.parallel import init_process_group
    from spro_mcore.rollout.engine import EngineSpec, SamplingParams, build_engine
    from spro_mcore.rollout.engine_group import EngineGroup
    from tests.rollout.rollout_helpers import hf_state_dict

    init_process_group()
    rank = dist.get_rank()
    sampling = SamplingParams(n=2, temperature=0.9, max_new_tokens=6, seed=21)
    # one tensor per bucket: the engine fails on rank 1's second tensor with the rest of the stream unread
    engine = build_engine(EngineSpec(backend="hf", model_path=model_path, bucket_bytes=1))
    group = EngineGroup(engine, None, engine_tp=1)
    out = {"shared": group.generate(prompts, sampling), "share": group.last_share}
    out["alone"] = group.engine.generate(prompts, sampling) if rank == 0 else None
    try:
        group.generate(bad_prompts, sampling)
        out["bad_prompt"] = None
    except EngineError as e:
        out["bad_prompt"] = str(e)

    weights = list(hf_state_dict(Path(model_path)).items())

    def stream():  # collective per tensor, like the Megatron export; rank 1's second tensor has a wrong shape
        for i, (name, t) in enumerate(weights):
            dist.all_reduce(torch.zeros(1))
            yield name, (t[:1] if rank == 1 and i == 1 else t)

    try:
        group.update_weights(stream())
        out["bad_update"] = None
    except EngineError as e:
        out["bad_update"] = str(e)
    group.close()
    return out


def test_two_engines_share_the_prompts_and_fail_together(tiny_models):
    from tests.rollout.rollout_helpers import long_prompts

    prompts = long_prompts(3, lengths=(5, 7, 9))
    bad = [prompts[0], prompts[1], [5, 100_000]]  # the out-of-vocabulary prompt lands in rank 1's share
    r0, r1 = run_in_processes(_group, 2, str(tiny_models[(True, "a")]), prompts, bad, timeout=180)
    assert (r0["share"], r1["share"]) == ((0, 2), (2, 3))
    assert r1["shared"] is None
    as_tuples = [[(s.token_ids, s.logprobs, s.finish_reason) for s in g] for g in r0["shared"]]
    assert as_tuples == [[(s.token_ids, s.logprobs, s.finish_reason) for s in g] for g in r0["alone"]]
    for r in (r0, r1):
        assert r["bad_prompt"] and "model-parallel rank 1 failed" in r["bad_prompt"]
        assert "outside the vocabulary" in r["bad_prompt"]
        assert r["bad_update"] and "model-parallel rank 1 failed" in r["bad_update"]
        assert "shape" in r["bad_update"]
