"""rollout.weight_sync_delta with the real vLLM engine (in process, folder transport): a step that changes
some tensors sends only those, and the engine then matches the HF reference of the full new state; the
worker refuses a folder that is not the version the trainer wrote; backends whose receiving side cannot check
a delta refuse the option at start-up."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from tests.rollout.engine_contract import TEMPERATURE, TOL
from tests.rollout.rollout_helpers import hf_state_dict, long_prompts, max_logprob_gap

pytest.importorskip("vllm")

from spro_mcore.rollout.engine import EngineError, EngineSpec, SamplingParams, build_engine  # noqa: E402

pytestmark = pytest.mark.engine


def _mixed_checkpoint(start, new, path, take):
    """The checkpoint a training step that moved only the tensors `take(name)` selects would produce."""
    shutil.copytree(start, path)
    a, b = hf_state_dict(start), hf_state_dict(new)
    mixed = {n: (b[n] if take(n) else a[n]) for n in a}
    save_file(mixed, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path, mixed


def test_delta_sends_changed_tensors_and_matches_the_full_state(tiny_models, reference, tmp_path):
    start, new = tiny_models[(False, "a")], tiny_models[(False, "b")]
    moved = lambda n: n.startswith("model.layers.1.") or n == "lm_head.weight"  # noqa: E731
    mixed_path, mixed = _mixed_checkpoint(start, new, tmp_path / "mixed", moved)
    start_weights = hf_state_dict(start)
    # what the step changed (layer 1's norms are ones in both checkpoints: equal, so not sent)
    changed = {n for n, t in mixed.items() if not torch.equal(t, start_weights[n])}
    assert changed and {n for n in changed if not moved(n)} == set() and len(changed) < sum(map(moved, mixed))
    engine = build_engine(EngineSpec(backend="vllm", model_path=str(start), kv_cache_memory_bytes=64 << 20,
                                     max_model_len=1024, weight_sync="folder", weight_sync_delta=True,
                                     weight_sync_dir=str(tmp_path / "sync")))
    try:
        prompts = long_prompts()
        sampling = SamplingParams(n=2, temperature=TEMPERATURE, max_new_tokens=12, seed=7)
        first = engine.update_weights(start_weights.items())
        assert first.tensors == len(start_weights)  # the first sync is full

        stats = engine.update_weights(mixed.items())
        assert stats.tensors == len(changed)
        assert stats.bytes == sum(mixed[n].numel() * mixed[n].element_size() for n in changed)
        after = engine.generate(prompts, sampling)
        assert max_logprob_gap(reference, mixed_path, prompts, after, TEMPERATURE) <= TOL
        assert max_logprob_gap(reference, start, prompts, after, TEMPERATURE) > 0.5

        # the worker checks the folder's version before loading: a folder behind the trainer is refused
        with pytest.raises(Exception, match="holds version 2, the trainer wrote 3: a missed or partial update"):
            engine.llm.collective_rpc("spro_reload_weights", kwargs={
                "weights_path": str(engine.sync_dir.path), "expect_version": 3})
        again = engine.generate(prompts, sampling)
        assert max_logprob_gap(reference, mixed_path, prompts, again, TEMPERATURE) <= TOL
    finally:
        engine.close()


@pytest.mark.parametrize("backend,mode,transport,hint", [
    ("hf", "colocated", "auto", "set weight_sync_delta=false"),
    ("vllm", "colocated", "tensors", "use weight_sync=folder"),
    ("sglang", "server", "nccl", "set weight_sync_delta=false"),
    ("sglang", "server", "folder", "set weight_sync_delta=false"),
])
def test_delta_is_refused_where_the_receiver_cannot_check_it(tiny_models, backend, mode, transport, hint):
    spec = EngineSpec(backend=backend, mode=mode, model_path=str(tiny_models[(True, "a")]), weight_sync=transport,
                      weight_sync_delta=True, server_urls=["http://127.0.0.1:1"], kv_cache_memory_bytes=64 << 20)
    with pytest.raises(EngineError, match=f"rollout.weight_sync_delta=true is not available .*{hint}"):
        build_engine(spec)
