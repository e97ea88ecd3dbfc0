import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from spro_mcore.rewards import VerifierTimeout, call_with_timeout, resolve_reward_fn, score_responses

pytestmark = pytest.mark.unit

sys.path.insert(0, str(Path(__file__).parent))
MOD = "user_rewards_for_tests"


def test_scores_and_metadata_are_passed():
    res = score_responses(resolve_reward_fn(f"{MOD}:weighted"), ["x=4", "x=5", "x=4"], ["4", "4", "4"],
                          [{"weight": 1.0}, {"weight": 1.0}, {"weight": 0.25}])
    assert res.rewards == [1.0, 0.0, 0.25] and res.num_errors == 0
    assert res.metrics() == {"reward/verifier_errors": 0, "reward/verifier_timeouts": 0}


def test_math_verifier_through_the_scorer():
    res = score_responses(resolve_reward_fn("math"), [r"$\boxed{1/2}$", "7", r"\boxed{1}"], ["0.5", "6", ""])
    assert res.rewards == [1.0, 0.0, 0.0]
    assert res.num_errors == 1 and res.failed == [2] and "cannot parse the ground-truth" in res.first_error


def test_raising_and_non_numeric_functions_give_zero_and_are_counted(caplog):
    res = score_responses(resolve_reward_fn(f"{MOD}:raises"), ["a", "b"], ["a", "b"])
    assert res.rewards == [0.0, 0.0] and res.num_errors == 2 and res.num_timeouts == 0
    assert "RuntimeError: broken reward function" in res.first_error
    assert "failed on 2 of 2 responses" in caplog.text
    res = score_responses(resolve_reward_fn(f"{MOD}:returns_nan"), ["a"], ["a"])
    assert res.rewards == [0.0] and res.num_errors == 1 and "not a finite number" in res.first_error


@pytest.mark.parametrize("fn", ["sleeps", "spins_and_swallows"])
@pytest.mark.parametrize("where", ["main_thread", "worker_thread"])
def test_slow_functions_time_out(fn, where):
    reward_fn = resolve_reward_fn(f"{MOD}:{fn}")
    args = (reward_fn, ["a", "b"], ["a", "b"])
    start = time.monotonic()
    if where == "main_thread":
        res = score_responses(*args, timeout_s=0.3)
    else:
        with ThreadPoolExecutor(1) as pool:
            res = pool.submit(score_responses, *args, timeout_s=0.3).result()
    elapsed = time.monotonic() - start
    assert res.rewards == [0.0, 0.0] and res.num_timeouts == 2 and res.num_errors == 2
    assert res.metrics() == {"reward/verifier_errors": 2, "reward/verifier_timeouts": 2}
    assert 0.6 <= elapsed < 3.0


def test_timed_out_busy_helper_threads_are_stopped():
    spin = resolve_reward_fn(f"{MOD}:spins_and_swallows")
    before = set(threading.enumerate())  # other tests' threads may end meanwhile: only new ones count

    def in_worker():
        with pytest.raises(VerifierTimeout):
            call_with_timeout(spin, 0.2, "a", "b")

    t = threading.Thread(target=in_worker)
    t.start()
    t.join()

    def leftover():
        return [th for th in threading.enumerate() if th not in before and th.is_alive()]

    deadline = time.monotonic() + 5
    while leftover() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftover() == []  # the spinning helper got the injected timeout and ended


@pytest.mark.parametrize("outer_s, call_s", [(0.5, 0.0), (0.2, 0.5)])  # outer alarm after / during the call
def test_outer_alarm_is_honoured(outer_s, call_s):
    fired = []
    saved_handler = signal.signal(signal.SIGALRM, lambda *a: fired.append(time.monotonic()))
    saved_timer = signal.setitimer(signal.ITIMER_REAL, 0)  # e.g. pytest-timeout's; given back below
    try:
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, outer_s)
        assert call_with_timeout(lambda: time.sleep(call_s) or 1.0, 5.0) == 1.0
        assert call_s <= time.monotonic() - start < call_s + 0.3  # the call itself was not cut short
        time.sleep(max(0.0, start + outer_s + 0.3 - time.monotonic()))
        assert len(fired) == 1 and outer_s - 0.05 < fired[0] - start < outer_s + 0.25
    finally:
        signal.signal(signal.SIGALRM, saved_handler)
        signal.setitimer(signal.ITIMER_REAL, *saved_timer)
