import sys
from pathlib import Path

import pytest

from spro_mcore.rewards import resolve_reward_fn
from spro_mcore.rewards.math_verify_reward import math_reward
from spro_mcore.rewards.synthetic_arithmetic import arithmetic_reward

pytestmark = pytest.mark.unit

sys.path.insert(0, str(Path(__file__).parent))  # as a user's PYTHONPATH would make their module importable
MOD = "user_rewards_for_tests"


def test_builtins_by_name():
    assert resolve_reward_fn("math") is math_reward
    assert resolve_reward_fn("synthetic_arithmetic") is arithmetic_reward


def test_user_functions_by_module_and_name():
    fn = resolve_reward_fn(f"{MOD}:exact_match")
    assert fn(" 42 ", "42") == 1.0 and fn("41", "42") == 0.0
    assert resolve_reward_fn(f"{MOD}:weighted")("x=42", "42", weight=0.5) == 0.5
    assert resolve_reward_fn(f"{MOD}:Scorers.contains")("x=42", "42") == 1.0
    assert resolve_reward_fn("spro_mcore.rewards.synthetic_arithmetic:arithmetic_reward") is arithmetic_reward


@pytest.mark.parametrize("name, message", [
    ("maths", r"unknown reward function 'maths': use one of \['math', 'synthetic_arithmetic'\] or 'module:function'"),
    ("no_such_module_xyz:f", r"cannot import module 'no_such_module_xyz'"),
    (f"{MOD}:missing", rf"'{MOD}' has no attribute 'missing'"),
    (f"{MOD}:not_callable", r"'not_callable' in 'user_rewards_for_tests' is not callable"),
    (f"{MOD}:", r"unknown reward function"),
])
def test_bad_names_fail_clearly(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_reward_fn(name)
