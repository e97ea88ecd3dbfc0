"""Checkpoints of the whole training state.

- `files`: the on-disk protocol (layout, manifest, atomic commit, `latest`, keep-last): knows nothing of
  what is inside a checkpoint;
- `state`, `rng`: what is saved (the Megatron dist checkpoint of policy + optimizer + schedule; RNG states);
- `checkpointer`: the loop's contract (restore, maybe_save, preemption, finish), built from the two;
- `preemption`: SIGTERM/SIGINT as a collective stop flag; `export`: checkpoints -> HF directories.
"""

from spro_mcore.trainer.checkpoint.checkpointer import Checkpointer, nonfinite_in_row

__all__ = ["Checkpointer", "nonfinite_in_row"]
