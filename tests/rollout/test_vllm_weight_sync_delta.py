"""rollout.weight_sync_delta with the real vLLM engine in process (folder transport): a step that changes
some tensors sends only those, and the engine then matches the HF reference of the full new state
(`check_delta_update`); the worker refuses a folder that is not the version the trainer wrote; backends whose
receiving side cannot check a delta refuse the option at start-up. (The server path: test_vllm_server.py.)"""

from __future__ import annotations

import pytest

from tests.rollout.engine_contract import check_delta_update

pytest.importorskip("vllm")

from spro_mcore.rollout.engine import EngineError, EngineSpec, build_engine  # noqa: E402

pytestmark = pytest.mark.engine


def test_delta_sends_changed_tensors_and_matches_the_full_state(tiny_models, reference, tmp_path):
    start, new = tiny_models[(False, "a")], tiny_models[(False, "b")]
    engine = build_engine(EngineSpec(backend="vllm", model_path=str(start), kv_cache_memory_bytes=64 << 20,
                                     max_model_len=1024, weight_sync="folder", weight_sync_delta=True,
                                     weight_sync_dir=str(tmp_path / "sync")))
    try:
        check_delta_update(engine, start, new, tmp_path / "mixed", reference)
        # the worker checks the folder's version before loading: a folder behind the trainer is refused
        with pytest.raises(Exception, match="holds version 2, the trainer wrote 3: a missed or partial update"):
            engine.llm.collective_rpc("spro_reload_weights", kwargs={
                "weights_path": str(engine.sync_dir.path), "expect_version": 3})
    finally:
        engine.close()


@pytest.mark.parametrize("backend,mode,transport,hint", [
    ("hf", "colocated", "auto", "set weight_sync_delta=false"),
    ("vllm", "colocated", "tensors", "use weight_sync=folder"),
    ("sglang", "server", "nccl", "set weight_sync_delta=false"),
    ("sglang", "server", "folder", "set weight_sync_delta=false"),
])
def test_delta_is_refused_where_the_receiver_cannot_check_it(tiny_models, backend, mode, transport, hint):
    from spro_mcore.config.schema import RolloutConfig

    cfg = RolloutConfig(engine=backend, mode=mode, weight_sync=transport, weight_sync_delta=True,
                        server_urls=["http://127.0.0.1:1"], kv_cache_memory_bytes=64 << 20)
    spec = EngineSpec.from_rollout_config(cfg, str(tiny_models[(True, "a")]))  # the config field reaches the spec
    with pytest.raises(EngineError, match=f"rollout.weight_sync_delta=true is not available .*{hint}"):
        build_engine(spec)
