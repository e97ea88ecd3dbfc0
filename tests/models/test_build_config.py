"""HF config -> TransformerConfig (config-level: no model is run here). The Transformer Engine / FP8 path is
checked at this level only, because Transformer Engine cannot be imported on a CPU machine."""

import types

import pytest
import torch

from spro_mcore.config.schema import ModelConfig
from spro_mcore.errors import UserError
from spro_mcore.models.build import llama3_inv_freq, resolve_transformer_impl, te_available, transformer_config
from spro_mcore.models.fp8 import fp8_pass, fp8_transformer_config_kwargs
from spro_mcore.models.hf_arch import UnsupportedModelError, parse_hf_config
from tests.models.tiny_hf import hf_config

pytestmark = pytest.mark.unit


def test_families_map_onto_megatron_fields():
    q2 = transformer_config(parse_hf_config(hf_config("qwen2").to_dict()), ModelConfig(), transformer_impl="local")
    q3 = transformer_config(parse_hf_config(hf_config("qwen3").to_dict()), ModelConfig(), transformer_impl="local")
    ll = transformer_config(parse_hf_config(hf_config("llama").to_dict()), ModelConfig(), transformer_impl="local")
    assert (q2.add_qkv_bias, q2.qk_layernorm, q2.kv_channels, q2.num_query_groups) == (True, False, 16, 2)
    assert (q3.add_qkv_bias, q3.qk_layernorm, q3.kv_channels) == (False, True, 32)
    assert (ll.add_qkv_bias, ll.qk_layernorm, ll.gated_linear_unit, ll.add_bias_linear) == (False, False, True, False)
    assert ll.normalization == "RMSNorm" and ll.layernorm_epsilon == 1e-6 and ll.params_dtype == torch.float32


def test_legacy_rope_fields_and_padding():
    cfg = hf_config("llama", vocab=301).to_dict()
    cfg.pop("rope_parameters")
    cfg.update(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})  # transformers < 5 layout
    arch = parse_hf_config(cfg)
    assert (arch.rope.theta, arch.rope.kind, arch.rope.factor) == (5e5, "linear", 2.0)
    assert [arch.padded_vocab_size(tp) for tp in (1, 2, 4, 3)] == [384, 384, 384, 384]
    assert parse_hf_config({**cfg, "vocab_size": 151936}).padded_vocab_size(8) == 151936


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"attention_bias": True, "model_type": "llama"}, "attention_bias"),
])
def test_unsupported_configs_name_the_problem(change, message):
    with pytest.raises(UnsupportedModelError, match=message.replace("(", r"\(")):
        parse_hf_config({**hf_config("qwen2").to_dict(), **change})


def test_missing_config_is_one_clear_error(tmp_path):
    with pytest.raises(UnsupportedModelError, match="no HF config.json"):
        parse_hf_config(str(tmp_path))


def test_llama3_inv_freq_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = hf_config("llama", rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    arch = parse_hf_config(cfg.to_dict())
    torch.testing.assert_close(llama3_inv_freq(arch.rope, arch.head_dim), ref.float(), rtol=1e-6, atol=0)


# --- Transformer Engine / FP8: config level (labelled: TE cannot run on this CPU machine) -------------------

def test_te_config_level_fp8_fields():
    arch = parse_hf_config(hf_config("qwen3").to_dict())
    cfg = transformer_config(arch, ModelConfig(fp8="hybrid", fp8_recipe="delayed", dtype="bfloat16"), tp=2,
                             transformer_impl="transformer_engine")
    assert (cfg.transformer_impl, cfg.fp8, cfg.fp8_recipe, cfg.fp8_param, cfg.bf16) == (
        "transformer_engine", "hybrid", "delayed", False, True)
    assert fp8_transformer_config_kwargs(None, "delayed", "local") == {}
    assert fp8_transformer_config_kwargs("e4m3", "mxfp8", "transformer_engine")["fp8_recipe"] == "mxfp8"
    with pytest.raises(UserError, match="needs Transformer Engine"):
        fp8_transformer_config_kwargs("e4m3", "delayed", "local")
    with pytest.raises(UserError, match="fp8_recipe"):
        fp8_transformer_config_kwargs("e4m3", "nope", "transformer_engine")


def test_te_impl_resolution():
    assert resolve_transformer_impl("local") == "local"
    assert resolve_transformer_impl("auto") == ("transformer_engine" if te_available() else "local")
    if not te_available():
        with pytest.raises(UserError, match="transformer_engine does not import"):
            resolve_transformer_impl("transformer_engine")


def test_fp8_scope_toggles_config_per_pass():
    config = types.SimpleNamespace(fp8="e4m3")
    model = types.SimpleNamespace(config=config)
    with fp8_pass([model], "e4m3", "logprobs", forward_only=False):
        assert config.fp8 is None  # training pass: bf16
    with fp8_pass([model], "e4m3", "logprobs", forward_only=True):
        assert config.fp8 == "e4m3"
    with fp8_pass([model], "e4m3", "all", forward_only=False):
        assert config.fp8 == "e4m3"
    assert config.fp8 == "e4m3"
