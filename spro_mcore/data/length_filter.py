"""Drop prompts longer than a token budget, and say how many went."""

from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def filter_by_length(items: Sequence[T], lengths: Sequence[int], max_length: int | None) -> tuple[list[T], int]:
    """(the items whose length is at most ``max_length``, the number dropped); None keeps everything."""
    if max_length is None:
        return list(items), 0
    if max_length <= 0:
        raise ValueError(f"max_prompt_length must be positive, got {max_length}")
    kept = [item for item, n in zip(items, lengths, strict=True) if n <= max_length]
    return kept, len(items) - len(kept)
