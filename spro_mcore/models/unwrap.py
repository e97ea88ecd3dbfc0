"""The GPTModel inside Megatron's wrappers (DDP, Float16Module, ...): they all hold it as `.module`."""

from __future__ import annotations


def unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


def as_list(models) -> list:
    return list(models) if isinstance(models, (list, tuple)) else [models]
