"""RolloutConfig -> EngineSpec: every rollout field reaches the engine or the loop's sampling; none is dropped."""

import dataclasses

import pytest

from spro_mcore.config import load_config
from spro_mcore.config.schema import RolloutConfig
from spro_mcore.rollout.engine import SAMPLING_FIELDS, SPEC_FIELDS, EngineSpec

pytestmark = pytest.mark.unit


def test_every_rollout_field_is_mapped_or_sampling():
    names = {f.name for f in dataclasses.fields(RolloutConfig)}
    assert names == set(SPEC_FIELDS) | set(SAMPLING_FIELDS)
    assert set(SPEC_FIELDS.values()) <= {f.name for f in dataclasses.fields(EngineSpec)}


def test_values_reach_the_spec():
    cfg = load_config(None, ["rollout.engine=vllm", "rollout.engine_tp=2", "rollout.sleep_when_idle=true",
                             "rollout.kv_cache_memory_bytes=1234", "rollout.max_retries=7"]).rollout
    spec = EngineSpec.from_rollout_config(cfg, "/m", seed=5)
    assert (spec.backend, spec.engine_tp, spec.release_memory, spec.kv_cache_memory_bytes, spec.max_retries,
            spec.model_path, spec.seed) == ("vllm", 2, True, 1234, 7, "/m", 5)
    assert EngineSpec.from_rollout_config(load_config(None, []).rollout, "/m").release_memory is False


def test_a_field_that_reaches_nothing_is_an_error():
    @dataclasses.dataclass
    class Extended(RolloutConfig):
        new_knob: int = 3

    with pytest.raises(TypeError, match=r"rollout fields \['new_knob'\] reach no engine setting"):
        EngineSpec.from_rollout_config(Extended(), "/m")
