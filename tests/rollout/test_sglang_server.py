"""The SGLang adapter against FAKE SGLang servers: SGLang cannot be installed on this machine, so
fake_sglang_server.py stands in for it, implementing exactly the documented request/response shapes of
SGLang's native HTTP API over a real HF model. What this proves: the adapter speaks those shapes, spreads
groups round-robin over servers, delivers weights through the safetensors folder to every server (parity
with the HF reference after the update), flushes caches, retries, and fails with clear messages. What it
cannot prove: SGLang's own behaviour behind those shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spro_mcore.rollout.engine import EngineError, EngineSpec, SamplingParams, build_engine
from spro_mcore.rollout.server_pool import ServerPool
from spro_mcore.rollout.sglang_server import SglangServerEngine
from spro_mcore.parallel.distributed import free_port
from tests.rollout.engine_contract import (
    check_parity_across_update, check_seeded_sampling, check_stop_token, check_top_k_logprobs,
)
from tests.rollout.fake_sglang_server import FakeSglang
from tests.rollout.rollout_helpers import hf_state_dict, long_prompts
from tests.rollout.server_process import running_server

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def servers(tiny_models):
    fakes = [FakeSglang(str(tiny_models[(True, "a")])) for _ in range(2)]
    yield fakes
    for f in fakes:
        f.close()


@pytest.fixture
def engine(servers, tiny_models, tmp_path):
    e = build_engine(EngineSpec(backend="sglang", mode="server", server_urls=[f.url for f in servers],
                                model_path=str(tiny_models[(True, "a")]), dtype="float32",
                                weight_sync_dir=str(tmp_path / "weights"), release_memory=True))
    yield e
    e.close()


def test_parity_across_weight_update_on_every_server(engine, servers, tiny_models, reference):
    check_parity_across_update(engine, tiny_models[(True, "a")], tiny_models[(True, "b")], reference)
    for fake in servers:  # both served groups after the update (3 prompts over 2 servers), both were updated
        assert fake.calls.count("/update_weights_from_disk") == 1
        after_update = fake.calls[fake.calls.index("/update_weights_from_disk"):]
        assert after_update[1] == "/flush_cache"
        assert "/generate" in after_update


def test_groups_go_round_robin_across_calls(engine, servers):
    sampling = SamplingParams(n=2, max_new_tokens=2, seed=0)
    engine.generate(long_prompts(3, lengths=(10,)), sampling)
    engine.generate(long_prompts(1, lengths=(10,)), sampling)
    assert [f.calls.count("/generate") for f in servers] == [2, 2]


def test_seeded_sampling(engine):
    check_seeded_sampling(engine)


def test_stop_token(engine):
    check_stop_token(engine)


def test_top_k_logprobs_are_renormalised_over_the_kept_tokens(engine, tiny_models):
    check_top_k_logprobs(engine, tiny_models[(True, "a")])


def test_top_p_is_rejected(engine):
    with pytest.raises(EngineError, match="top_p < 1 is not supported"):
        engine.generate([[5, 6]], SamplingParams(top_p=0.9))


def test_sleep_and_wake_release_and_resume_memory(engine, servers):
    engine.sleep()
    assert all(f.memory_released for f in servers)
    engine.wake()
    assert not any(f.memory_released for f in servers)


def test_server_errors_are_retried(engine, servers):
    servers[0].fail_next("/generate", 1, 503)
    groups = engine.generate([[5, 6, 7]], SamplingParams(n=2, max_new_tokens=3, seed=1))
    assert len(groups[0]) == 2 and servers[0].calls.count("/generate") == 2


def test_failed_weight_load_names_the_server_and_its_message(engine, servers, tiny_models):
    servers[1].fail_next("/update_weights_from_disk", 1, 400)
    with pytest.raises(EngineError, match=f"{servers[1].url}.*injected failure"):
        engine.update_weights(hf_state_dict(tiny_models[(True, "b")]).items())


def test_broadcast_weight_sync_over_a_process_group(tiny_models, reference, tmp_path):
    """weight_sync=nccl's handshake and broadcasts, with gloo standing in for NCCL and the fake server in a
    process of its own (rank 1 of the group): parity with the new weights after the update."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start, new = tiny_models[(True, "a")], tiny_models[(True, "b")]
    cmd = [sys.executable, "-m", "tests.rollout.fake_sglang_server", str(start), str(port)]
    with running_server(cmd, url, tmp_path / "fake.log", env={"PYTHONPATH": str(REPO)}, timeout_s=120):
        engine = SglangServerEngine([url], model_path=str(start), dtype="float32", weight_sync="nccl",
                                    nccl_master=("127.0.0.1", free_port()), broadcast_backend="gloo")
        try:
            check_parity_across_update(engine, start, new, reference)
        finally:
            engine.close()


def test_unreachable_server_gives_one_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    pool = ServerPool([url], "sglang server", timeout_s=2, max_retries=2, backoff_s=0.01)
    with pytest.raises(EngineError, match=rf"sglang server unreachable at {url} \(POST /generate\) after 3 attempts"):
        pool.request(url, "POST", "/generate", {})
