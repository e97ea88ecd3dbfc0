"""Reward functions by name: the built-ins, or any user function given as ``"module:function"``.

A reward function has the signature ``fn(response_text: str, answer: str, **meta) -> float``: ``meta``
carries the dataset row's other fields. Names resolve once, at start-up, so a typo fails before training.
"""

from __future__ import annotations

import importlib
from typing import Callable

RewardFn = Callable[..., float]

BUILTIN_REWARDS = {
    "math": "spro_mcore.rewards.math_verify_reward:math_reward",
    "synthetic_arithmetic": "spro_mcore.rewards.synthetic_arithmetic:arithmetic_reward",
}


def resolve_reward_fn(name: str) -> RewardFn:
    """The reward function called ``name``: a key of :data:`BUILTIN_REWARDS` or ``"package.module:function"``."""
    target = BUILTIN_REWARDS.get(name, name)
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(
            f"unknown reward function {name!r}: use one of {sorted(BUILTIN_REWARDS)} "
            f"or 'module:function' (e.g. 'my_rewards:exact_match')"
        )
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward function {name!r}: cannot import module {module_name!r} ({e})") from e
    except SyntaxError as e:
        raise ValueError(f"reward function {name!r}: {e.filename}:{e.lineno}: syntax error in module "
                         f"{module_name!r} ({e.msg})") from None
    except Exception as e:  # noqa: BLE001 - the plugin's own code raised while being imported
        raise ValueError(f"reward function {name!r}: importing module {module_name!r} raised "
                         f"{type(e).__name__}: {e}{_where(e)}") from None
    for part in attr_path.split("."):  # "module:Class.method" works too
        if not hasattr(obj, part):
            raise ValueError(f"reward function {name!r}: {obj.__name__!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward function {name!r}: {attr_path!r} in {module_name!r} is not callable")
    return obj


def _where(e: BaseException) -> str:
    """ ' at file:line' of the innermost frame of a plugin's exception."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
