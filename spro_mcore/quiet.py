"""A quiet start: the third-party warnings that carry no action for the user, filtered in ONE place, before
the imports that emit them (`spro-mcore` calls `install` first thing; train/eval again with the config's
`logging.level`). `logging.level=DEBUG` shows all of them again.

What is filtered, and why it needs no action:
- megatron-core's "Transformer Engine and Apex are not installed" fallbacks (one per module it imports):
  replaced by one INFO line from the trainer saying which implementation runs;
- megatron-core / torch deprecation notices (FutureWarning, DeprecationWarning, "... is deprecated"):
  about megatron's own calls, not the user's config;
- torch's non-leaf `.grad` access warning raised inside megatron-core's optimizer;
- transformers' per-load "Loading weights" progress bar.
"""

from __future__ import annotations

import os
import sys
import warnings

_MESSAGES = (
    r".*Transformer Engine and Apex are not installed.*",
    r".*(Transformer Engine|Apex|CUDA_DEVICE_MAX_CONNECTIONS).*",
    r".*is deprecated.*",
    r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed.*",
)
_installed: list = []


def install(level: str = "INFO") -> None:
    """Filter the no-action warnings (any level but DEBUG); DEBUG removes the filters again."""
    global _installed
    warnings.filters[:] = [f for f in warnings.filters if f not in _installed]
    _installed = []
    if level == "DEBUG":
        return
    before = list(warnings.filters)
    for message in _MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    _installed = [f for f in warnings.filters if f not in before]
    # read by huggingface_hub when transformers is first imported; afterwards, switched off directly
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def megatron_impl_line() -> str:
    """The one INFO line that replaces megatron-core's fallback warnings."""
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is None:
        return "Transformer Engine not installed: using the local transformer implementation and torch optimizers"
    return "Transformer Engine installed"
