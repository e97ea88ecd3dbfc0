"""Config loading: YAML + overrides, typed; every bad value names its key."""

import subprocess
import sys
from pathlib import Path

import pytest

from spro_mcore.config import ConfigError, load_config, validate_world_size
from spro_mcore.config.load import SCHEMA_KEYS

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_defaults_yaml_and_overrides_layer(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("trainer:\n  total_steps: 7\nalgo:\n  beta: 0.5\n")
    cfg = load_config(y, ["trainer.total_steps=3", "rollout.engine=vllm", "rollout.mode=server",
                        "rollout.server_urls=[http://a:1,http://b:2]"])
    assert cfg.trainer.total_steps == 3  # override beats YAML
    assert cfg.algo.beta == 0.5  # YAML beats default
    assert cfg.algo.estimator == "spro"  # default
    assert cfg.rollout.server_urls == ["http://a:1", "http://b:2"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.totl_steps=3", "unknown config key 'trainer.totl_steps'; did you mean 'trainer.total_steps'?"),
        ("trainr.seed=1", "unknown config section 'trainr' in 'trainr.seed'; did you mean 'trainer'?"),
        ("trainer.total_steps=abc", "config key 'trainer.total_steps' (command line): expected int, got 'abc'"),
        ("algo.estimator=ppo", "config key 'algo.estimator' = 'ppo' is not one of: spro, grpo, pav, spro_balanced"),
        ("rollout.n=0", "config key 'rollout.n' must be > 0, got 0"),
        ("trainer.total_steps", "override 'trainer.total_steps' is not of the form section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_unknown_key_in_yaml(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("algo:\n  betta: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'algo.betta'; did you mean 'algo.beta'\?"):
        load_config(y)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="rollout.server_urls"):
        load_config(None, ["rollout.engine=vllm", "rollout.mode=server"])
    with pytest.raises(ConfigError, match="Transformer Engine"):
        load_config(None, ["model.fp8=e4m3", "model.transformer_impl=local"])
    # context parallelism is refused whatever the packing (config/unwired.py; it splits no sequence)
    with pytest.raises(ConfigError, match="context parallelism is not implemented"):
        load_config(None, ["parallel.cp=2", "trainer.packing=false"])


def test_world_size_consistency():
    cfg = load_config(None, ["parallel.tp=2", "parallel.pp=2"])
    assert validate_world_size(cfg, 8) == 2
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by .* = 2 x 2 x 1 = 4"):
        validate_world_size(cfg, 6)
    cfg = load_config(None, ["parallel.tp=2", "parallel.dp=3"])
    with pytest.raises(ConfigError, match=r"2 x 1 x 1 x 3 = 6 does not match the world size 4"):
        validate_world_size(cfg, 4)


def test_every_shipped_recipe_loads():
    recipes = sorted((ROOT / "configs").glob("*.yaml"))
    assert recipes, "configs/ has no recipes"
    for path in recipes:
        load_config(path)


def test_every_field_has_a_comment():
    src = (ROOT / "spro_mcore" / "config" / "schema.py").read_text()
    for key in SCHEMA_KEYS:
        name = key.rsplit(".", 1)[-1]
        if "." in key and not key.count(".") > 1:
            lines = [l for l in src.splitlines() if l.strip().startswith(f"{name}:")]
            assert any("#" in l for l in lines), f"config field {key} has no one-line comment"


def test_cli_misspelt_key_exits_nonzero_with_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "spro_mcore.cli", "config", "trainer.totl_steps=3"], capture_output=True, text=True
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "spro-mcore config: error: unknown config key 'trainer.totl_steps'; did you mean 'trainer.total_steps'?"
    ]


def test_cli_help_lists_subcommands():
    r = subprocess.run([sys.executable, "-m", "spro_mcore.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("train", "convert", "eval", "config", "pav", "search"):
        assert cmd in r.stdout
    r = subprocess.run([sys.executable, "-m", "spro_mcore.cli", "pav", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and all(cmd in r.stdout for cmd in ("collect", "train", "score"))


@pytest.mark.parametrize("override,message", [
    ("pav.prover=oracle", "'pav.prover' = 'oracle' is not one of: policy, bok"),
    ("pav.n_mc=0", "'pav.n_mc' must be > 0"),
    ("pav.heldout_fraction=1.0", "'pav.heldout_fraction' must be in (0, 1)"),
    ("pav.splitter=regex:(", "'pav.splitter': splitter 'regex:(': not a valid regular expression"),
    ("search.beam_width=0", "'search.beam_width' must be > 0"),
    ("search.alpha=-1", "'search.alpha' must be >= 0"),
])
def test_pav_and_search_sections_are_validated(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    (["algo.tis=true", "algo.mis=token"], "algo.tis and algo.mis are two corrections"),
    (["algo.mis=sequence", "algo.mis_low=2.0", "algo.mis_high=1.5"], "algo.mis_high = 1.5 must be > algo.mis_low"),
    (["algo.old_logprobs=engine", "algo.tis=true"], "algo.old_logprobs=engine makes the trainer/engine ratio 1"),
    (["algo.old_logprobs=engine", "algo.mis=token"], "algo.old_logprobs=engine makes the trainer/engine ratio 1"),
    (["algo.mis=both"], "config key 'algo.mis' = 'both' is not one of: null, token, sequence"),
    (["algo.old_logprobs=rollout"], "config key 'algo.old_logprobs' = 'rollout' is not one of: recompute, engine"),
])
def test_mismatch_correction_options_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_async_mode_off_is_the_word_not_yaml_false(tmp_path):
    # YAML 1.1 reads a bare `off` as false; the documented value must still load, from a file and the command line
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  async_mode: off\n")
    assert load_config(f).trainer.async_mode == "off"
    assert load_config(None, ["trainer.async_mode=one_step_off", "trainer.async_mode=off"]).trainer.async_mode == "off"
    with pytest.raises(ConfigError, match="'trainer.async_mode' = 'fully_async' is not one of: off, one_step_off, "
                                          "bounded"):
        load_config(None, ["trainer.async_mode=fully_async"])


def test_max_staleness_is_a_non_negative_int():
    assert load_config(None, ["trainer.async_mode=bounded", "trainer.max_staleness=0"]).trainer.max_staleness == 0
    with pytest.raises(ConfigError, match="'trainer.max_staleness' must be >= 0"):
        load_config(None, ["trainer.async_mode=bounded", "trainer.max_staleness=-1"])
