"""The seam between the loop and the model: what the step scheduler asks of a policy (and its frozen reference).

Device contract: the caller's tensors may live anywhere (the loop builds the rollout batch on the CPU); the
implementation moves what it needs to the model's device and returns every tensor on the CPU, where the
loop, `spro_mcore/algo` and the metrics work. The implementation also owns the device of every collective it
issues (through `spro_mcore.parallel.collectives`). Every method is collective: all ranks of the job call it
at the same point with the same batch.

Checkpoint contract: the checkpointer never looks inside a policy. It asks for `sharded_state_dict()`, has it
written or read by the dist-checkpoint store, and hands the loaded state back through `load_state_dict()`.
"""

from __future__ import annotations

import abc
from typing import Iterator, Optional

import torch

from spro_mcore.trainer.rollout_batch import RolloutBatch


class Policy(abc.ABC):
    arch: object  # models.hf_arch.HFArch: the HF architecture the weights export to

    @abc.abstractmethod
    def logprobs(self, batch: RolloutBatch, *, reference: bool = False, with_entropy: bool = False
                 ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """[B, T] log-probs (and entropy) of the batch's response tokens under the policy, or under the frozen
        reference with `reference=True`; on the CPU, 0 beyond each response."""

    @abc.abstractmethod
    def update(self, batch: RolloutBatch, advantages: torch.Tensor, old_logprobs: torch.Tensor,
               ref_logprobs: torch.Tensor) -> dict[str, float]:
        """The policy-gradient update on this batch ([B, T] inputs on any device); returns its metrics."""

    @abc.abstractmethod
    def export_weights(self, dtype: Optional[torch.dtype] = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Full HF-named tensors of the current policy (on the model's device; every rank must iterate)."""

    @abc.abstractmethod
    def sharded_state_dict(self, *, is_loading: bool = False) -> dict:
        """Weights, optimizer and schedule as a sharded state dict (what the dist-checkpoint store writes), or,
        with `is_loading`, the request to fill on load."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Take back a loaded `sharded_state_dict`."""

    @abc.abstractmethod
    def load_reference(self, path: str) -> None:
        """Replace the frozen reference weights by those of the model at `path` (same architecture)."""

    @property
    @abc.abstractmethod
    def optimizer_steps(self) -> int:
        """Optimizer steps taken so far (to tell whether the weights moved since a step boundary)."""

    @abc.abstractmethod
    def model_metadata(self) -> dict:
        """Architecture, dtype and vocabulary of the weights, for a checkpoint that doubles as a model."""
