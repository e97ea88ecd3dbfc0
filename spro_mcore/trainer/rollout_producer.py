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

- bounded (`BoundedRolloutProducer`): a background thread feeds a buffer continuously, one step's batch after
  the other, each tagged with the version of the weights that sampled it. It may start the batch of step j
  while the engine holds version v only if j <= v + max_staleness (generated any earlier, it would be too old
  when step j consumes it). At consumption a batch older than max_staleness versions is dropped, counted
  (`rollout/dropped_stale`, in rows) and regenerated in place from the same prompts and step seed with the
  current weights. The thread pauses at `before_weight_sync` (the generation in flight is drained: the
  engine's weights never change under one) and resumes at the next `next()`, so the weight sync, eval and
  checkpoint never meet a generation. max_staleness=0: step j is generated only once the engine holds version
  j, i.e. `off` through the thread. Which version samples step j (>= j - max_staleness) depends on timing, so
  a bounded run with max_staleness >= 1 is not reproducible bit for bit. With the in-process hf engine the
  thread shares the CPU cores with the Megatron passes (the engine forks and reseeds the torch RNG per prompt;
  the Megatron passes draw no random numbers, dropout is 0).

  `lag` (test hook) pins bounded's schedule: the feed runs exactly `lag` (<= max_staleness) steps ahead and
  `next(k)` waits until it has generated every batch the start rule allows (steps <= k + lag), so no
  generation overlaps a Megatron pass and batch j is always sampled by version max(start_step, j - lag)
  (staleness min(j - start_step, lag)): a bounded run is then reproducible bit for bit.

Kill -9 / preemption: a prefetched or buffered batch lives only in memory. A checkpoint records the prompt
state before the prompts of the next step to train (`Trainer.data_state`), so on resume the lost batches are
regenerated from the same prompts and step seeds with the checkpointed weights (staleness 0 for the first
resumed step, as step 0; bounded: the feed restarts at step k with version k). `drop_at` is the test hook
that makes an uninterrupted run drop the batches generated ahead for step k and later the same way, from the
same prompts (the reference of the kill -9 tests).
"""

from __future__ import annotations

import os
import threading
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
    rows: int = 0  # samples in the batch (counted when a stale batch is dropped)


def env_test_hooks() -> dict:
    """The test hooks, read here alone (the `lag` and `drop_at` of the producers):
    SPRO_MCORE_TEST_ASYNC_LAG=L: one_step_off with L=0 prefetches after the weight sync (must equal off);
    bounded runs exactly L steps ahead and waits for them (batch j sampled by version max(start, j - L)).
    SPRO_MCORE_TEST_ASYNC_DROP_AT=k: drop what was generated ahead for step k and later and regenerate it
    from the same prompts with version k, as a run resumed from step k's checkpoint does."""
    def read(name):
        v = os.environ.get(f"SPRO_MCORE_TEST_ASYNC_{name}")
        return None if v is None else int(v)

    return {"lag": read("LAG"), "drop_at": read("DROP_AT")}


def rollout_producer(produce, *, mode: str, start_step: int, total_steps: int, threaded: bool,
                     lag: Optional[int] = None, max_staleness: int = 0, drop_at: Optional[int] = None):
    """The producer of trainer.async_mode `mode`."""
    if mode == "bounded":
        return BoundedRolloutProducer(produce, start_step=start_step, total_steps=total_steps,
                                      max_staleness=max_staleness, lag=lag, drop_at=drop_at)
    return RolloutProducer(produce, mode=mode, start_step=start_step, total_steps=total_steps, threaded=threaded,
                           lag=lag, drop_at=drop_at)


class RolloutProducer:
    def __init__(self, produce: Callable[[int, int], Rollout], *, mode: str, start_step: int, total_steps: int,
                 threaded: bool, lag: Optional[int] = None, drop_at: Optional[int] = None):
        """`produce(step, version)` generates and scores the batch of `step` with the engine's current
        weights, which are `version`. `threaded`: the engine runs outside this process (servers)."""
        self.produce, self.mode, self.total_steps = produce, mode, total_steps
        self.lag = (1 if mode == "one_step_off" else 0) if lag is None else lag
        self.drop_at = drop_at  # test hook: drop the batch prefetched for this step, as a resume does
        self.threaded = threaded or (mode != "off" and self.lag == 0)  # lag 0 awaits at once: safe anywhere
        self.version = start_step  # the engine holds the weights after `start_step` updates
        self._pending: Optional[tuple[int, Future | Rollout]] = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout") if self.threaded else None

    def next(self, step: int) -> Rollout:
        """The rollout that trains step `step`."""
        if self._pending is not None and self._pending[0] == step and step == self.drop_at:
            rollout = self.produce(step, self.version, self._take().prompts)  # the same prompts, this version
        elif self._pending is not None and self._pending[0] == step:
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


class BoundedRolloutProducer:
    """trainer.async_mode=bounded: a buffer fed by a background thread, at most `max_staleness` versions stale.

    `produce(step, version, prompts=None)` generates the batch of `step` (from `prompts` when given: the
    regeneration of a dropped batch) with the engine's current weights, `version`."""

    def __init__(self, produce: Callable[..., Rollout], *, start_step: int, total_steps: int, max_staleness: int,
                 lag: Optional[int] = None, drop_at: Optional[int] = None):
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if lag is not None and not 0 <= lag <= max_staleness:
            raise ValueError(f"the test hook's lag must be in [0, max_staleness={max_staleness}], got {lag}")
        self.produce, self.total_steps, self.max_staleness = produce, total_steps, max_staleness
        self.ahead = max_staleness if lag is None else lag  # how far the feed may run ahead of the version
        self.pinned = lag is not None  # test hook: next() waits for every batch the start rule allows
        self.drop_at = drop_at  # test hook: drop what was generated ahead for this step on, as a resume does
        self.version = start_step
        self._next = start_step  # the next step the thread generates
        self._buffer: dict[int, Rollout] = {}
        self._redo: dict[int, object] = {}  # step -> the prompts of a dropped batch, generated again
        self._busy = False  # a generation is in flight
        self._paused, self._closing, self._regenerating = True, False, False
        self._error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._feed, name="rollout-bounded", daemon=True)
        self._thread.start()

    def _may_start(self) -> bool:
        return (not self._paused and not self._regenerating and self._next < self.total_steps
                and self._next <= self.version + self.ahead)

    def _feed(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or self._may_start())
                if self._closing:
                    return
                step, version, self._busy = self._next, self.version, True
                self._next += 1
                redo = [self._redo.pop(step)] if step in self._redo else []
            try:
                rollout = self.produce(step, version, *redo)
            except BaseException as e:  # handed to the consumer, which raises it in the main thread
                with self._cond:
                    self._error, self._busy, self._closing = e, False, True
                    self._cond.notify_all()
                return
            with self._cond:
                self._buffer[step], self._busy = rollout, False
                self._cond.notify_all()

    def next(self, step: int) -> Rollout:
        """The rollout that trains `step` (the trainer holds version `step`); resumes the feed."""
        with self._cond:
            if step == self.drop_at:  # the feed is paused and drained here: restart it at `step`, as a resume
                for s in sorted(self._buffer):
                    self._redo[s] = self._buffer.pop(s).prompts
                self._next = step
            self._paused = False
            self._cond.notify_all()
            last = min(step + self.ahead, self.total_steps - 1)
            self._cond.wait_for(lambda: self._error is not None or (
                step in self._buffer and (not self.pinned or (self._next > last and not self._busy))))
            if self._error is not None:
                raise self._error
            rollout = self._buffer.pop(step)
        dropped = 0
        if step - rollout.version > self.max_staleness:  # too old: the same prompts and seed, current weights
            dropped = rollout.rows
            with self._cond:  # one generation at a time on the engine (and its RNG): hold the feed
                self._regenerating = True
                self._cond.wait_for(lambda: not self._busy)
            try:
                rollout = self.produce(step, self.version, rollout.prompts)
            finally:
                with self._cond:
                    self._regenerating = False
                    self._cond.notify_all()
        rollout.metrics = {**rollout.metrics, "rollout/dropped_stale": float(dropped)}
        return rollout

    def before_weight_sync(self) -> None:
        """Pause the feed and drain the generation in flight: the engine's weights must not change under it."""
        with self._cond:
            self._paused = True
            self._cond.wait_for(lambda: not self._busy)

    def weights_synced(self, step: int) -> None:
        with self._cond:
            self.version = step

    def close(self) -> None:
        with self._cond:
            self._paused = True
            self._cond.wait_for(lambda: not self._busy)
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
