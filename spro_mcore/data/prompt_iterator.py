"""Endless batches of prompts, reshuffled every epoch from (seed, epoch), with a position that can be saved.

The state is (epoch, position): ``position`` items of epoch ``epoch``'s order have been handed out. The
order of an epoch depends only on (seed, epoch, dataset size), so a run resumed from ``state_dict()`` yields
exactly the batches an uninterrupted run would have, across epoch boundaries too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spro_mcore.data.prompt_dataset import PromptDataset
from spro_mcore.data.rows import DataError


def epoch_order(num_items: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the items: a permutation seeded by (seed, epoch)."""
    if not shuffle:
        return np.arange(num_items)
    return np.random.default_rng([seed, epoch]).permutation(num_items)


@dataclass
class PromptBatch:
    input_ids: list[list[int]]  # prompt token ids (unpadded)
    answers: list[str]
    metadata: list[dict[str, Any]]
    texts: list[str]  # rendered prompt texts
    indices: list[int]  # positions in the dataset
    epoch: int

    def __len__(self) -> int:
        return len(self.input_ids)


class PromptIterator:
    """Batches of ``batch_size`` prompts, forever. ``drop_last``: an epoch's last, short batch is skipped
    (every batch is full); otherwise it is yielded as is."""

    def __init__(self, dataset: PromptDataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if drop_last and batch_size > len(dataset):
            raise DataError(
                f"{dataset.path}: batch_size={batch_size} is larger than the {len(dataset)} prompts "
                f"({dataset.num_dropped} were dropped by the length filter)"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.position = 0, 0
        self._order = epoch_order(len(dataset), seed, 0, shuffle)

    def __iter__(self) -> "PromptIterator":
        return self

    def __next__(self) -> PromptBatch:
        n = len(self.dataset)
        picked = self._order[self.position : self.position + self.batch_size].tolist()
        items = [self.dataset[i] for i in picked]
        batch = PromptBatch(
            input_ids=[it.input_ids for it in items], answers=[it.answer for it in items],
            metadata=[it.metadata for it in items], texts=[it.text for it in items], indices=picked,
            epoch=self.epoch,
        )
        self.position += len(picked)
        left = n - self.position
        if left == 0 or (self.drop_last and left < self.batch_size):  # the state always names the next batch
            self._start_epoch(self.epoch + 1)
        return batch

    def _start_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0
        self._order = epoch_order(len(self.dataset), self.seed, epoch, self.shuffle)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "num_items": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``. The dataset, seed and shuffling must be those the state was saved with."""
        for key, now in (("num_items", len(self.dataset)), ("seed", self.seed), ("shuffle", self.shuffle)):
            if state[key] != now:
                raise DataError(
                    f"cannot resume the prompt iterator: the checkpoint has {key}={state[key]!r} but this run has "
                    f"{now!r} (the data, its length filter, or data seed changed since the checkpoint)"
                )
        if not 0 <= state["position"] < len(self.dataset):
            raise DataError(f"cannot resume the prompt iterator: position {state['position']} is out of range")
        self._start_epoch(state["epoch"])
        self.position = state["position"]
