"""Value ranges and cross-field checks (config/ranges.py): every range names a real key, the defaults pass,
the edges are where the table says, and samples per step are counted per data-parallel replica."""

import pytest

from spro_mcore.config import ConfigError, load_config, validate_world_size
from spro_mcore.config.load import SCHEMA_KEYS
from spro_mcore.config.ranges import RANGES

pytestmark = pytest.mark.unit


def test_every_range_names_a_schema_key():
    assert set(RANGES) <= set(SCHEMA_KEYS)
    load_config(None)  # the defaults are in range


@pytest.mark.parametrize("override, ok", [
    ("optim.adam_beta2=0.0", True), ("optim.adam_beta2=0.999999", True), ("optim.adam_beta2=1.0", False),
    ("rollout.top_p=1.0", True), ("rollout.top_p=1e-9", True), ("rollout.top_p=0.0", False),
    ("rollout.top_k=-1", True), ("rollout.top_k=1", True), ("rollout.top_k=-2", False),
    ("data.reward_timeout_s=0.01", True), ("data.reward_timeout_s=-1", False),
    ("algo.dual_clip_c=1.5", True), ("algo.dual_clip_c=1.0", False),
    ("optim.lr=.inf", False), ("rollout.max_retries=0", True),
])
def test_edges(override, ok):
    if ok:
        load_config(None, [override])
    else:
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
            load_config(None, [override])


def test_mini_batches_against_samples_per_replica():
    cfg = load_config(None, ["data.prompts_per_step=4", "rollout.n=2", "trainer.mini_batches=8"])  # 8 samples
    assert validate_world_size(cfg, 1) == 1
    with pytest.raises(ConfigError, match=r"trainer\.mini_batches = 8 is more than the 4 samples of a step per "
                                          r"data-parallel replica \(dp=2\)"):
        validate_world_size(cfg, 2)
