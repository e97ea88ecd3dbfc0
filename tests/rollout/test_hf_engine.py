"""The embedded HF engine against the HF reference: parity across a weight update (tied and untied), seeds,
stop tokens, top-k log-probs, and clear errors for incomplete or misnamed weights."""

from __future__ import annotations

import pytest
from tests.rollout.engine_contract import (
    check_incomplete_update_fails, check_parity_across_update, check_seeded_sampling, check_stop_token,
    check_top_k_logprobs,
)
from tests.rollout.rollout_helpers import hf_state_dict
from spro_mcore.rollout.engine import EngineError, EngineSpec, SamplingParams, build_engine

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def engines(tiny_models):
    built = {tied: build_engine(EngineSpec(backend="hf", model_path=str(tiny_models[(tied, "a")])))
             for tied in (True, False)}
    yield built
    for e in built.values():
        e.close()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_parity_across_weight_update(engines, tiny_models, reference, tied):
    engine = engines[tied]
    try:
        check_parity_across_update(engine, tiny_models[(tied, "a")], tiny_models[(tied, "b")], reference)
    finally:  # leave the module's engine at its start weights
        engine.update_weights(hf_state_dict(tiny_models[(tied, "a")]).items())


def test_seeded_sampling(engines):
    check_seeded_sampling(engines[True])


def test_stop_token(engines):
    check_stop_token(engines[False])


def test_top_k_logprobs_are_renormalised_over_the_kept_tokens(engines, tiny_models):
    check_top_k_logprobs(engines[True], tiny_models[(True, "a")])


def test_update_with_a_missing_weight_fails(engines, tiny_models):
    check_incomplete_update_fails(engines[False], tiny_models[(False, "a")], tiny_models[(False, "b")])


def test_update_with_an_unknown_name_fails(engines, tiny_models):
    weights = hf_state_dict(tiny_models[(False, "a")])
    weights["model.layers.0.mlp.gate.weight"] = weights.pop("model.layers.0.mlp.gate_proj.weight")
    with pytest.raises(EngineError, match="model.layers.0.mlp.gate.weight"):
        engines[False].update_weights(weights.items())
    engines[False].update_weights(hf_state_dict(tiny_models[(False, "a")]).items())


def test_bad_prompts_are_rejected(engines):
    with pytest.raises(EngineError, match="prompt 1 is empty"):
        engines[True].generate([[5, 6], []], SamplingParams())
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engines[True].generate([[5, 600]], SamplingParams())


def test_unknown_backend_names_the_valid_ones():
    with pytest.raises(EngineError, match="hf/colocated"):
        build_engine(EngineSpec(backend="hf", mode="server"))


def test_a_transport_the_backend_lacks_is_named():
    with pytest.raises(EngineError, match="rollout.weight_sync='nccl' is not available for hf/colocated"):
        build_engine(EngineSpec(backend="hf", weight_sync="nccl"))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_sleep_frees_the_weights_and_the_sync_after_wake_restores_them(tiny_models, tied):
    engine = build_engine(EngineSpec(backend="hf", model_path=str(tiny_models[(tied, "a")])))
    prompts, sampling = [[5, 6, 7], [9, 10]], SamplingParams(n=2, temperature=0.8, max_new_tokens=8, seed=4)
    before = engine.generate(prompts, sampling)
    params = list(engine.model.parameters())
    held = sum(p.untyped_storage().nbytes() for p in params)
    engine.sleep()
    assert all(p.untyped_storage().nbytes() == 0 for p in params)  # the weights are gone, not moved
    with pytest.raises(EngineError, match="released"):
        engine.generate(prompts, sampling)
    with pytest.raises(EngineError, match="asleep"):
        engine.update_weights(hf_state_dict(tiny_models[(tied, "a")]).items())
    engine.wake()
    assert sum(p.untyped_storage().nbytes() for p in params) == held
    with pytest.raises(EngineError, match="update_weights"):  # woken memory holds no weights yet
        engine.generate(prompts, sampling)
    if tied:  # still one tensor under both names
        assert engine.model.lm_head.weight is engine.model.model.embed_tokens.weight
    engine.update_weights(hf_state_dict(tiny_models[(tied, "a")]).items())
    after = engine.generate(prompts, sampling)
    assert [[(s.token_ids, s.logprobs) for s in g] for g in after] == \
        [[(s.token_ids, s.logprobs) for s in g] for g in before]
    engine.close()
