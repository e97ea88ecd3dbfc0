"""Options the code does not run are refused at load time with one line naming the option and the way out;
the same options set to what does run load fine. Also the config-level wiring of sequence parallelism
(GPU-only: Transformer Engine), which cannot run on this machine."""

from __future__ import annotations

import pytest
import torch

from spro_mcore.config import ConfigError, load_config
from spro_mcore.config.schema import Config, ModelConfig
from spro_mcore.config.unwired import unwired_reasons

pytestmark = pytest.mark.unit


def _te_here() -> bool:
    from spro_mcore.models.build import te_available

    return te_available()


REFUSED = [
    (["parallel.cp=2"], "parallel.cp=2: context parallelism is not implemented"),
    (["parallel.ep=2"], "parallel.ep=2: expert parallelism needs a mixture-of-experts model"),
    (["parallel.tp=2", "parallel.sequence_parallel=true", "model.transformer_impl=local"],
     "parallel.sequence_parallel=true needs Transformer Engine"),
    (["parallel.vpp=2"], "parallel.vpp=2 needs pipeline parallelism: set parallel.pp >= 2"),
    (["parallel.pp=2", "parallel.vpp=1"], "parallel.vpp=1: virtual pipeline stages must be >= 2"),
    (["parallel.pp=2", "parallel.vpp=2"], "trainer.packing with parallel.vpp: the interleaved schedule needs"),
    (["model.fp8_scope=all"], "model.fp8_scope=all has no effect without model.fp8"),
    (["model.fp8_recipe=mxfp8"], "model.fp8_recipe=mxfp8 has no effect without model.fp8"),
    (["model.dtype=float16"], "model.dtype=float16 is not supported for training"),
    (["rollout.engine_tp=2"], "rollout.engine_tp=2: the hf engine runs on one device"),
    (["rollout.engine=vllm", "rollout.mode=server", "rollout.server_urls=[http://h:1]", "rollout.engine_tp=2"],
     "rollout.engine_tp=2 is not used in server mode"),
    (["rollout.server_urls=[http://h:1]"], "rollout.server_urls is only used with rollout.mode=server"),
    (["data.train_path=x.jsonl"], "data.train_path is set but data.source=synthetic ignores it"),
    (["data.eval_path=x.jsonl"], "data.eval_path is set but data.source=synthetic ignores it"),
    (["trainer.max_staleness=2"], "trainer.max_staleness=2 has no effect without trainer.async_mode=bounded"),
    (["trainer.async_mode=one_step_off", "trainer.max_staleness=0"],
     "trainer.max_staleness=0 has no effect without trainer.async_mode=bounded"),
    (["trainer.async_mode=bounded", "rollout.sleep_when_idle=true"],
     "trainer.async_mode=bounded with rollout.sleep_when_idle: the engine sleeps"),
    (["trainer.async_mode=one_step_off", "rollout.sleep_when_idle=true"],
     "trainer.async_mode=one_step_off with rollout.sleep_when_idle: the engine sleeps"),
    (["trainer.async_mode=one_step_off", "rollout.engine=vllm"],
     "trainer.async_mode=one_step_off with a colocated vllm engine"),
    (["trainer.async_mode=one_step_off", "algo.estimator=pav", "algo.pav_source=mc"],
     "trainer.async_mode=one_step_off with algo.estimator=pav"),
]
if not _te_here():  # auto means local here
    REFUSED += [
        (["parallel.tp=2", "parallel.sequence_parallel=true"], "parallel.sequence_parallel=true needs Transformer Engine"),
        (["model.fp8=e4m3"], "model.fp8=e4m3 needs Transformer Engine, which does not import here"),
    ]


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_unwired_option_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    text = str(e.value)
    assert text.startswith(message) and "\n" not in text


@pytest.mark.parametrize("overrides", [
    ["parallel.pp=2", "parallel.vpp=2", "trainer.packing=false"],
    ["parallel.cp=1", "parallel.ep=1"],
    ["model.dtype=bfloat16", "model.recompute_activations=true"],
    ["model.fp8=hybrid", "model.transformer_impl=transformer_engine", "model.fp8_scope=all", "model.fp8_recipe=tensorwise"],
    ["parallel.tp=2", "parallel.sequence_parallel=true", "model.transformer_impl=transformer_engine"],
    ["rollout.engine=vllm", "rollout.engine_tp=2"],
    ["data.source=file", "data.train_path=x.jsonl", "data.eval_path=y.jsonl"],
])
def test_the_runnable_variants_load(overrides):
    load_config(None, overrides)


def test_defaults_have_nothing_unwired():
    assert unwired_reasons(Config()) == []


def test_sequence_parallel_reaches_the_transformer_config():
    from spro_mcore.models.build import transformer_config
    from spro_mcore.models.hf_arch import parse_hf_config
    from tests.models.tiny_hf import hf_config

    arch = parse_hf_config(hf_config("qwen2").to_dict())
    for sp in (False, True):
        cfg = transformer_config(arch, ModelConfig(), tp=2, sequence_parallel=sp, transformer_impl="local")
        assert cfg.sequence_parallel is sp


def test_the_actor_builds_its_models_with_parallel_sequence_parallel(monkeypatch):
    """MegatronPolicy hands parallel.sequence_parallel to every model it loads (policy and reference)."""
    import spro_mcore.models.loader as loader
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy

    seen = []

    class Stop(Exception):
        pass

    def fake_load_model(path, model_cfg=None, *, sequence_parallel=False):
        seen.append(sequence_parallel)
        raise Stop

    monkeypatch.setattr(loader, "load_model", fake_load_model)
    for sp in (True, False):
        cfg = Config()
        cfg.parallel.tp, cfg.parallel.sequence_parallel = 2, sp
        with pytest.raises(Stop):
            MegatronPolicy(cfg, None, "policy", "reference", total_updates=1)
    assert seen == [True, False]


def test_sequence_parallel_pads_the_sequence_to_a_multiple_of_tp():
    """Megatron splits the sequence over TP ranks under sequence parallelism: the model runs at a padded
    length (right padding: no earlier position changes under causal attention)."""
    from types import SimpleNamespace

    from spro_mcore.models.logprobs import _model_inputs, model_seq_length

    def chunk(sp, tp):
        return SimpleNamespace(config=SimpleNamespace(sequence_parallel=sp, tensor_model_parallel_size=tp))

    assert model_seq_length(13, [chunk(False, 2)]) == 13
    assert model_seq_length(13, [chunk(True, 2)]) == 14
    assert model_seq_length(16, [chunk(True, 4)]) == 16
    ids, pos = _model_inputs(torch.arange(6).view(2, 3), "cpu", 4)
    assert ids.tolist() == [[0, 1, 2, 0], [3, 4, 5, 0]] and pos.tolist() == [[0, 1, 2, 3]] * 2
