"""The store for sharded state dicts: megatron-core `dist_checkpointing` save (sync or async) and load, with
its errors turned into `CheckpointError`. What goes into the state dict is the caller's business (the policy's
`sharded_state_dict`); where the files go and when a checkpoint counts as complete is the checkpoint package's.
"""

from __future__ import annotations

from typing import Callable

from spro_mcore.models.hf_checkpoint import CheckpointError

# metadata megatron-core's optimizers read back to pick the format of the distributed-optimizer state
CONTENT_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def save(state: dict, ckpt_dir: str, *, async_save: bool = False):
    """Collective. Returns megatron-core's AsyncRequest when `async_save` (give it to an `AsyncSaves`; the
    files are complete only once it is finalized), else None."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.save(state, ckpt_dir, async_sharded_save=async_save,
                                   content_metadata=dict(CONTENT_METADATA))


def load(request: dict, ckpt_dir: str) -> dict:
    """Collective: the state dict `request` (a sharded state dict with is_loading=True) filled from `ckpt_dir`."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        return dist_checkpointing.load(request, ckpt_dir)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # missing shards, unreshardable layout, unreadable files
        raise CheckpointError(f"cannot load training checkpoint {ckpt_dir}: {type(e).__name__}: {e}") from e


class AsyncSaves:
    """Async saves in flight (megatron-core's AsyncCallsQueue), each with a function to run once it is on disk."""

    def __init__(self):
        self._queue = None

    def schedule(self, request, on_done: Callable[[], None]) -> None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        request.finalize_fns.append(on_done)
        if self._queue is None:
            self._queue = AsyncCallsQueue()
        self._queue.schedule_async_request(request)

    def finalize(self, blocking: bool) -> None:
        """Collective: run the `on_done` of every save that finished (all of them, waiting, when blocking)."""
        if self._queue is not None and self._queue.get_num_unfinalized_calls():
            self._queue.maybe_finalize_async_calls(blocking=blocking)

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()
            self._queue = None

