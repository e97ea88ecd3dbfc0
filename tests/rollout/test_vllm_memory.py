"""rollout.gpu_memory_utilization sizes a colocated vLLM engine on CUDA; rollout.kv_cache_memory_bytes on CPU.
(The CUDA branch is checked at the argument level here: no GPU in CI.)"""

import pytest

from spro_mcore.config import load_config
from spro_mcore.rollout.engine import EngineError, EngineSpec
from spro_mcore.rollout.vllm_engine import memory_kwargs

pytestmark = pytest.mark.unit


def test_the_config_value_reaches_the_engine_arguments():
    cfg = load_config(None, ["rollout.engine=vllm", "rollout.gpu_memory_utilization=0.35",
                             "rollout.kv_cache_memory_bytes=1048576"])
    spec = EngineSpec.from_rollout_config(cfg.rollout, "model", seed=0, max_model_len=64)
    assert memory_kwargs(True, spec.gpu_memory_utilization, spec.kv_cache_memory_bytes) == {"gpu_memory_utilization": 0.35}
    assert memory_kwargs(False, spec.gpu_memory_utilization, spec.kv_cache_memory_bytes) == {"kv_cache_memory_bytes": 1048576}


def test_cpu_without_a_kv_cache_size_is_refused():
    with pytest.raises(EngineError, match="kv_cache_memory_bytes > 0"):
        memory_kwargs(False, 0.5, 0)
