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
