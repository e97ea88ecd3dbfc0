"""Colocated vLLM in a multi-rank job: vLLM groups `rollout.engine_tp` consecutive ranks into one engine, which
must stay inside one tensor-parallel group (one data-parallel replica); anything else is refused at start-up."""

import pytest

from spro_mcore.config import ConfigError, load_config, validate_world_size

pytestmark = pytest.mark.unit

VLLM = ["rollout.engine=vllm", "rollout.mode=colocated"]


def test_engine_tp_that_divides_tp_is_accepted():
    assert validate_world_size(load_config(None, [*VLLM, "parallel.tp=2", "rollout.engine_tp=2"]), 8) == 4
    assert validate_world_size(load_config(None, [*VLLM, "parallel.tp=2", "rollout.engine_tp=1"]), 2) == 1
    # (engine_tp > 1 with the hf engine or servers is refused outright: tests/config/test_unwired.py)


def test_engine_spanning_replicas_is_refused_with_one_line():
    cfg = load_config(None, [*VLLM, "parallel.tp=1", "rollout.engine_tp=2"])
    with pytest.raises(ConfigError, match=r"^rollout.engine_tp = 2 must divide parallel.tp = 1 for colocated vLLM"):
        validate_world_size(cfg, 2)
    cfg = load_config(None, [*VLLM, "parallel.tp=2", "parallel.pp=2", "rollout.engine_tp=4"])
    with pytest.raises(ConfigError, match="rollout.engine_tp = 4 must divide parallel.tp = 2"):
        validate_world_size(cfg, 8)


def test_engine_tp_must_be_positive():
    with pytest.raises(ConfigError, match="rollout.engine_tp"):
        load_config(None, ["rollout.engine_tp=0"])


def test_pav_mc_with_colocated_vllm_on_several_ranks_is_refused():
    cfg = load_config(None, [*VLLM, "parallel.tp=2", "algo.estimator=pav", "algo.pav_source=mc"])
    with pytest.raises(ConfigError, match="algo.pav_source=mc is not wired for colocated vLLM on several ranks"):
        validate_world_size(cfg, 2)
    one = load_config(None, [*VLLM, "algo.estimator=pav", "algo.pav_source=mc"])
    assert validate_world_size(one, 1) == 1
