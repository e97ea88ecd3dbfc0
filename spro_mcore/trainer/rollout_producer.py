"""The rollout producer: the one place where generation may overlap training (trainer.async_mode).

The loop asks `next(step)` for the scored rollout batch of a step and tells the producer when the engine's
weights are about to change (`before_weight_sync`) and have changed (`weights_synced`). What it gets back:

- off: the batch of step k is generated at the start of step k with the weights of version k (the weights
  after k updates): today's strictly sequential loop.
- one_step_off (lag 1): the batch of step k+1 is started as soon as step k's batch is handed over, with the
  weights of version k, and runs while step k's log-prob and update passes run; it is awaited before the
  weight sync (an engine's weights never change under a generation). Step k (k >= 1) then trains on data one
  version stale; step 0 (or the first step after a resume) has nothing prefetched and generates in place.

Where the overlap truly happens: with engine servers (rollout.mode=server, vLLM / SGLang over HTTP) the
prefetch runs in a thread, and the work runs in the server processes. The in-process hf engine samples with
the process-wide torch RNG (seeded per prompt), which the Megatron passes of the main thread share, so a
concurrent generation would be neither reproducible nor leave the trainer's RNG alone: with it, one_step_off
is sequential-but-stale (the prefetch runs in place, before the update, with the same weights and seeds a
thread would use), i.e. the staleness semantics without the speed-up.

`lag` is a test hook: lag 0 with one_step_off starts the prefetch after the weight sync in the thread and
awaits it at once, which must equal `off` bit for bit (the same weights, prompts and seeds, through the
thread path).

Kill -9 / preemption: a prefetched batch lives only in memory. The checkpoint is written after the step's
weight sync, when the next step's prompts were already drawn; on resume that batch is gone, its prompts are
skipped (the data order stays as checkpointed) and the first resumed step generates in place with the
checkpointed weights (staleness 0), as step 0 does.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Rollout:
    """One step's rollout as the owner of the engine produced it: the batch (None on ranks without an
    engine, or the EngineError met), its reward/timing metrics, and the policy version that sampled it."""

    batch: object
    metrics: dict
    version: int
    prompts: object = None  # the step's prompts (the process reward of PAV's mc source continues them)


class RolloutProducer:
    def __init__(self, produce: Callable[[int, int], Rollout], *, mode: str, start_step: int, total_steps: int,
                 threaded: bool, lag: Optional[int] = None):
        """`produce(step, version)` generates and scores the batch of `step` with the engine's current
        weights, which are `version`. `threaded`: the engine runs outside this process (servers)."""
        self.produce, self.mode, self.total_steps = produce, mode, total_steps
        self.lag = (1 if mode == "one_step_off" else 0) if lag is None else lag
        self.threaded = threaded or (mode != "off" and self.lag == 0)  # lag 0 awaits at once: safe anywhere
        self.version = start_step  # the engine holds the weights after `start_step` updates
        self._pending: Optional[tuple[int, Future | Rollout]] = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout") if self.threaded else None

    def next(self, step: int) -> Rollout:
        """The rollout that trains step `step`."""
        if self._pending is not None and self._pending[0] == step:
            rollout = self._take()
        else:  # nothing prefetched (off, the first step, after a resume): generate in place, staleness 0
            self._pending = None
            rollout = self.produce(step, self.version)
        if self.mode != "off" and self.lag >= 1:
            self._prefetch(step + 1)
        return rollout

    def before_weight_sync(self) -> None:
        """Await the generation in flight: the engine's weights must not change under it."""
        if self._pending is not None and isinstance(self._pending[1], Future):
            self._pending = (self._pending[0], self._pending[1].result())

    def weights_synced(self, step: int) -> None:
        """The engine now holds version `step` (the weights after `step` updates)."""
        self.version = step
        if self.mode != "off" and self.lag == 0:
            self._prefetch(step)
            self.before_weight_sync()

    def close(self) -> None:
        if self._pool is not None:
            self.before_weight_sync()  # let a generation in flight end before the engine goes away
            self._pool.shutdown(wait=True)

    def _prefetch(self, step: int) -> None:
        if step >= self.total_steps:  # nothing would train on it
            return
        if self.threaded:
            self._pending = (step, self._pool.submit(self.produce, step, self.version))
        else:  # sequential-but-stale: the same weights and seeds, generated now
            self._pending = (step, self.produce(step, self.version))

    def _take(self) -> Rollout:
        _, item = self._pending
        self._pending = None
        return item.result() if isinstance(item, Future) else item
