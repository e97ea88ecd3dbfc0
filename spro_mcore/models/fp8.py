"""FP8 settings of `ModelConfig` mapped onto megatron-core's TransformerConfig fields (Transformer Engine only).

`fp8_scope="logprobs"` builds the model with the FP8 recipe but switches `config.fp8` off for training
passes: megatron-core reads `config.fp8` at every TransformerBlock forward (its fp8 autocast context), so
`fp8_pass(models, forward_only=...)` toggles it per pass without rebuilding. `fp8_scope="all"` keeps it on.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from spro_mcore.errors import UserError

FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
FP8_SCOPES = ("logprobs", "all")


def fp8_transformer_config_kwargs(fp8: Optional[str], recipe: str, transformer_impl: str) -> dict:
    """TransformerConfig keyword arguments for the FP8 settings; {} when FP8 is off."""
    if fp8 is None:
        return {}
    if fp8 not in FP8_FORMATS:
        raise UserError(f"model.fp8={fp8!r} is not one of {FP8_FORMATS} (or null)")
    if recipe not in FP8_RECIPES:
        raise UserError(f"model.fp8_recipe={recipe!r} is not one of {FP8_RECIPES}")
    if transformer_impl != "transformer_engine":
        raise UserError("model.fp8 needs Transformer Engine (model.transformer_impl=transformer_engine, "
                        "or auto on a machine where transformer_engine imports)")
    kwargs = dict(fp8=fp8, fp8_recipe=recipe, fp8_param=False)
    if recipe == "delayed":  # the amax history the delayed-scaling recipe keeps
        kwargs.update(fp8_amax_history_len=1024, fp8_amax_compute_algo="max")
    return kwargs


@contextlib.contextmanager
def fp8_pass(models, fp8: Optional[str], scope: str, *, forward_only: bool) -> Iterator[None]:
    """Inside: FP8 on for this pass iff fp8 is set and (scope == "all" or the pass is forward-only)."""
    if scope not in FP8_SCOPES:
        raise UserError(f"model.fp8_scope={scope!r} is not one of {FP8_SCOPES}")
    configs = {id(m.config): m.config for m in _unwrap_all(models)}.values()
    want = fp8 if (fp8 is not None and (scope == "all" or forward_only)) else None
    saved = [(c, c.fp8) for c in configs]
    for c in configs:
        c.fp8 = want
    try:
        yield
    finally:
        for c, v in saved:
            c.fp8 = v


def _unwrap_all(models):
    from spro_mcore.models.unwrap import unwrap

    return [unwrap(m) for m in (models if isinstance(models, (list, tuple)) else [models])]
