"""The rollout producer's schedule (trainer.async_mode): which step is generated with which policy version,
when, and in which thread. The engine work is a recording function: what is tested is the scheduling."""

import threading

import pytest

from spro_mcore.trainer.rollout_producer import Rollout, RolloutProducer

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
