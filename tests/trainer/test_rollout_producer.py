"""The rollout producer's schedule (trainer.async_mode): which step is generated with which policy version,
when, and in which thread. The engine work is a recording function: what is tested is the scheduling."""

import threading

import pytest

from spro_mcore.trainer.rollout_producer import BoundedRolloutProducer, Rollout, RolloutProducer

pytestmark = pytest.mark.unit


def _drive(producer: RolloutProducer, steps: int, start: int = 0) -> list[Rollout]:
    """What the loop does: next, (log-probs, update), before_weight_sync, sync, weights_synced."""
    got = []
    for step in range(start, steps):
        got.append(producer.next(step))
        producer.before_weight_sync()
        producer.weights_synced(step + 1)
    producer.close()
    return got


def _recorder():
    calls = []

    def produce(step, version):
        calls.append((step, version, threading.current_thread().name))
        return Rollout(batch=f"batch{step}", metrics={}, version=version)

    return produce, calls


@pytest.mark.parametrize("threaded", [False, True])
def test_one_step_off_trains_step_k_on_version_k_minus_1(threaded):
    produce, calls = _recorder()
    got = _drive(RolloutProducer(produce, mode="one_step_off", start_step=0, total_steps=4, threaded=threaded), 4)
    assert [(r.batch, r.version) for r in got] == [("batch0", 0), ("batch1", 0), ("batch2", 1), ("batch3", 2)]
    assert [c[:2] for c in calls] == [(0, 0), (1, 0), (2, 1), (3, 2)]  # nothing generated past the last step
    in_thread = [c[2].startswith("rollout") for c in calls]
    assert in_thread == ([False, True, True, True] if threaded else [False] * 4)


def test_off_and_lag_0_generate_each_step_with_its_own_version():
    for mode, lag in (("off", None), ("one_step_off", 0)):
        produce, calls = _recorder()
        got = _drive(RolloutProducer(produce, mode=mode, start_step=0, total_steps=3, threaded=False, lag=lag), 3)
        assert [(r.batch, r.version) for r in got] == [("batch0", 0), ("batch1", 1), ("batch2", 2)]


def test_resume_generates_the_first_step_in_place_with_the_checkpointed_version():
    produce, calls = _recorder()
    got = _drive(RolloutProducer(produce, mode="one_step_off", start_step=2, total_steps=4, threaded=True), 4, start=2)
    assert [(r.batch, r.version) for r in got] == [("batch2", 2), ("batch3", 2)]


def test_the_prefetch_overlaps_the_update_and_ends_before_the_weight_sync():
    release, started = threading.Event(), threading.Event()

    def produce(step, version):
        if step == 1:  # the prefetch: it runs while the main thread "updates"
            started.set()
            assert release.wait(30), "the main thread never released the prefetch"
        return Rollout(batch=step, metrics={}, version=version)

    p = RolloutProducer(produce, mode="one_step_off", start_step=0, total_steps=2, threaded=True)
    assert p.next(0).batch == 0  # returns while step 1's generation is still running
    assert started.wait(30)
    release.set()  # the update is done
    p.before_weight_sync()  # awaits it
    assert not isinstance(p._pending[1], type(None)) and p._pending[1].batch == 1
    p.weights_synced(1)
    assert p.next(1).version == 0
    p.close()


# ---- trainer.async_mode=bounded: the buffer fed by a thread ----------------------------------------------

def _bounded_recorder(release=None):
    """produce(step, version, prompts=None); `release[step]`, when given, holds that step's generation."""
    calls, lock = [], threading.Lock()

    def produce(step, version, prompts=None):
        if release is not None and step in release:
            assert release[step].wait(30), f"step {step}'s generation was never released"
        with lock:
            calls.append((step, version, prompts, threading.current_thread().name))
        return Rollout(batch=f"batch{step}", metrics={}, version=version, prompts=prompts or f"prompts{step}", rows=8)

    return produce, calls


@pytest.mark.parametrize("max_staleness", [0, 1, 2])
def test_bounded_feed_is_throttled_by_max_staleness(max_staleness):
    produce, calls = _bounded_recorder()
    p = BoundedRolloutProducer(produce, start_step=0, total_steps=5, max_staleness=max_staleness)
    got = _drive(p, 5)
    assert [r.batch for r in got] == [f"batch{s}" for s in range(5)]  # every step's own prompts, in order
    for step, r in enumerate(got):
        assert 0 <= step - r.version <= max_staleness
        assert r.metrics["rollout/dropped_stale"] == 0.0
    # every generation ran in the feed thread, none past the last step, and step j no earlier than version
    # j - max_staleness
    assert sorted(c[0] for c in calls) == list(range(5))
    assert all(c[3] == "rollout-bounded" and c[0] - c[1] <= max_staleness for c in calls)
    if max_staleness == 0:  # nothing ahead: each step generated with its own version, i.e. `off`
        assert [(c[0], c[1]) for c in calls] == [(s, s) for s in range(5)]


def test_bounded_generates_ahead_while_the_step_trains_and_drains_before_the_sync():
    started, release, calls = threading.Event(), threading.Event(), []

    def produce(step, version, prompts=None):
        if step == 2:  # the generation in flight when the step's update ends
            started.set()
            assert release.wait(30), "step 2's generation was never released"
        calls.append((step, version))
        return Rollout(batch=step, metrics={}, version=version)

    p = BoundedRolloutProducer(produce, start_step=0, total_steps=4, max_staleness=2)
    assert p.next(0).version == 0
    assert started.wait(30)  # while step 0 "trains" the feed generated step 1 and started 2 (2 <= 0 + 2)
    drained = threading.Thread(target=p.before_weight_sync)
    drained.start()
    drained.join(0.3)
    assert drained.is_alive(), "the weight sync did not wait for the generation in flight"
    release.set()
    drained.join(30)
    assert not drained.is_alive()
    assert calls == [(0, 0), (1, 0), (2, 0)]  # paused: step 3 (> version 0 + 2) not started
    p.weights_synced(1)
    assert p.next(1).version == 0  # generated ahead with version 0: one version stale
    p.before_weight_sync()
    p.weights_synced(2)
    assert p.next(2).version == 0  # two versions stale: the bound
    p.before_weight_sync()
    p.weights_synced(3)
    assert p.next(3).version in (1, 2, 3)
    p.close()
    assert all(step - version <= 2 for step, version in calls)


def test_bounded_drops_a_batch_older_than_max_staleness_and_regenerates_its_prompts():
    """A batch whose recorded version is too old at consumption (here: the engine reported an older version
    than the producer expected) is dropped, counted in rows, and regenerated from the same prompts with the
    current weights."""
    calls = []

    def produce(step, version, prompts=None):
        calls.append((step, version, prompts))
        lagging = version - 2 if prompts is None and step == 2 else version  # step 2's engine lagged
        return Rollout(batch=f"batch{step}", metrics={}, version=lagging, prompts=prompts or f"prompts{step}",
                       rows=8)

    got = _drive(BoundedRolloutProducer(produce, start_step=0, total_steps=4, max_staleness=1), 4)
    assert [r.metrics["rollout/dropped_stale"] for r in got] == [0.0, 0.0, 8.0, 0.0]
    assert got[2].version == 2 and got[2].prompts == "prompts2"
    assert (2, 2, "prompts2") in calls  # the regeneration: the same prompts, the current version


def test_bounded_resume_starts_at_the_checkpointed_version_and_errors_reach_the_main_thread():
    produce, calls = _bounded_recorder()
    got = _drive(BoundedRolloutProducer(produce, start_step=3, total_steps=5, max_staleness=1), 5, start=3)
    assert [r.batch for r in got] == ["batch3", "batch4"] and got[0].version == 3

    def failing(step, version, prompts=None):
        raise RuntimeError("engine died")

    p = BoundedRolloutProducer(failing, start_step=0, total_steps=2, max_staleness=1)
    with pytest.raises(RuntimeError, match="engine died"):
        p.next(0)
    p.close()


def test_drop_at_regenerates_the_prefetched_step_in_place_from_its_prompts_with_the_current_version():
    """The reference of the kill -9 resume test: what a run resumed from step 2's checkpoint does."""
    calls = []

    def produce(step, version, prompts=None):
        calls.append((step, version, prompts))
        return Rollout(batch=f"batch{step}", metrics={}, version=version, prompts=prompts or f"prompts{step}")

    got = _drive(RolloutProducer(produce, mode="one_step_off", start_step=0, total_steps=4, threaded=False,
                                 drop_at=2), 4)
    assert [(r.prompts, r.version) for r in got] == [("prompts0", 0), ("prompts1", 0), ("prompts2", 2),
                                                     ("prompts3", 2)]
    assert calls == [(0, 0, None), (1, 0, None), (2, 1, None), (2, 2, "prompts2"), (3, 2, None)]


@pytest.mark.parametrize("lag", [1, 2])
def test_bounded_lag_hook_pins_each_batch_to_version_max_start_or_step_minus_lag(lag):
    """The test hook that makes a bounded run reproducible: step j is always sampled by version
    max(start, j - lag), whatever the thread's timing (step 1's generation is slowed down here)."""
    slow = threading.Event()  # never set: step 1 waits out its timeout below
    produce, calls = _bounded_recorder()

    def slow_produce(step, version, prompts=None):
        if step == 1:
            slow.wait(0.2)
        return produce(step, version, prompts)

    got = _drive(BoundedRolloutProducer(slow_produce, start_step=0, total_steps=5, max_staleness=2, lag=lag), 5)
    assert [r.version for r in got] == [max(0, j - lag) for j in range(5)]
    produce, calls = _bounded_recorder()
    got = _drive(BoundedRolloutProducer(produce, start_step=2, total_steps=5, max_staleness=2, lag=lag), 5, start=2)
    assert [r.version for r in got] == [max(2, j - lag) for j in range(2, 5)]
    with pytest.raises(ValueError, match="lag must be in"):
        BoundedRolloutProducer(produce, start_step=0, total_steps=2, max_staleness=1, lag=2)


def test_bounded_drop_at_restarts_the_feed_at_step_k_with_version_k_from_the_same_prompts():
    """The reference of the bounded kill -9 resume test: what a run resumed from step 2's checkpoint does."""
    produce, calls = _bounded_recorder()
    got = _drive(BoundedRolloutProducer(produce, start_step=0, total_steps=5, max_staleness=2, lag=2, drop_at=2), 5)
    assert [(r.prompts, r.version) for r in got] == [("prompts0", 0), ("prompts1", 0), ("prompts2", 2),
                                                     ("prompts3", 2), ("prompts4", 2)]
    assert [c[:3] for c in calls] == [(0, 0, None), (1, 0, None), (2, 0, None), (3, 1, None),  # then dropped
                                      (2, 2, "prompts2"), (3, 2, "prompts3"), (4, 2, None)]
    assert all(r.metrics["rollout/dropped_stale"] == 0.0 for r in got)  # lost to a resume, not stale
