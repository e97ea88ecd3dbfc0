"""Score responses with a reward function under a per-call time limit; failures give reward 0 and are counted.

Time limit, per call:
- in the main thread: ``SIGALRM`` via ``setitimer`` interrupts the function itself (nothing keeps running
  afterwards). An outer timer already armed (pytest-timeout, a user's alarm) is honoured and re-armed.
- in any other thread (signals cannot be used there): the function runs in a helper thread; on timeout the
  caller moves on and a :class:`VerifierTimeout` is injected into the helper so that pure-Python work stops.

Neither can stop a C call that holds the GIL (e.g. a catastrophic regex): such a call delays the scorer
until it returns. A user function that calls math-verify with its own (signal-based) time limits works in
the main thread only; math-verify raises in other threads unless its limits are switched off.

Metrics: ``reward/verifier_errors`` counts every call that did not give a finite number (raised, timed out,
returned something else); ``reward/verifier_timeouts`` counts the timeouts among them.
"""

from __future__ import annotations

import ctypes
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)


class VerifierTimeout(BaseException):
    """Raised inside a reward function that ran past its time limit.

    A BaseException so that a user function's ``except Exception`` cannot swallow it.
    """


def call_with_timeout(fn: Callable[..., Any], timeout_s: float | None, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)``, raising :class:`VerifierTimeout` after ``timeout_s`` seconds (None: no limit)."""
    if timeout_s is None:
        return fn(*args, **kwargs)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
    if threading.current_thread() is threading.main_thread():
        return _call_with_alarm(fn, timeout_s, args, kwargs)
    return _call_in_helper_thread(fn, timeout_s, args, kwargs)


def _call_with_alarm(fn, timeout_s, args, kwargs):
    start = time.monotonic()
    deadline = start + timeout_s
    outer_handler = signal.getsignal(signal.SIGALRM)
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_deadline = start + outer_delay if outer_delay > 0 else math.inf
    outer_fired = False

    def on_alarm(signum, frame):
        nonlocal outer_fired
        now = time.monotonic()
        if not outer_fired and now >= outer_deadline - 1e-4:  # the outer timer's turn came first
            outer_fired = True
            if callable(outer_handler):
                outer_handler(signum, frame)
            if now < deadline:
                signal.setitimer(signal.ITIMER_REAL, deadline - now)
                return
        raise VerifierTimeout(f"reward function ran past {timeout_s:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, min(deadline, outer_deadline) - start)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_deadline < math.inf and not outer_fired:  # give the outer timer back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_deadline - time.monotonic(), 1e-3), outer_interval)
        elif outer_fired and outer_interval > 0:
            signal.setitimer(signal.ITIMER_REAL, outer_interval, outer_interval)


class _Call:
    def __init__(self):
        self.lock = threading.Lock()
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None


def _call_in_helper_thread(fn, timeout_s, args, kwargs):
    call = _Call()

    def run():
        try:
            try:
                call.value = fn(*args, **kwargs)
            except BaseException as e:  # incl. the injected VerifierTimeout; reported to the caller
                call.error = e
            with call.lock:
                call.finished = True
        except BaseException:  # an injected timeout landing after fn returned: the caller already moved on
            pass

    helper = threading.Thread(target=run, name=f"reward-{getattr(fn, '__name__', 'fn')}", daemon=True)
    helper.start()
    helper.join(timeout_s)
    with call.lock:  # while held, an unfinished helper cannot exit, so its thread id cannot be reused
        if not call.finished:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(helper.ident), ctypes.py_object(VerifierTimeout))
            raise VerifierTimeout(f"reward function ran past {timeout_s:g} s")
    if call.error is not None:
        raise call.error
    return call.value


@dataclass
class ScoreResult:
    rewards: list[float]
    num_errors: int = 0  # calls that raised, timed out or returned a non-finite / non-number value
    num_timeouts: int = 0  # of which timed out
    first_error: str | None = None  # what went wrong first, for the log
    failed: list[int] = field(default_factory=list)  # indices of the failed calls

    def metrics(self) -> dict[str, float]:
        return {"reward/verifier_errors": self.num_errors, "reward/verifier_timeouts": self.num_timeouts}


def score_responses(
    reward_fn: Callable[..., float],
    responses: Sequence[str],
    answers: Sequence[str],
    metadata: Sequence[dict] | None = None,
    *,
    timeout_s: float | None = 10.0,
) -> ScoreResult:
    """``reward_fn(response, answer, **meta)`` for each response, each call limited to ``timeout_s``.

    A call that raises, times out, or returns anything but a finite number gets reward 0.0 and is counted;
    a summary with the first failure is logged at WARNING. KeyboardInterrupt and SystemExit propagate.
    """
    if len(answers) != len(responses) or (metadata is not None and len(metadata) != len(responses)):
        raise ValueError(
            f"score_responses: {len(responses)} responses but {len(answers)} answers"
            + ("" if metadata is None else f" and {len(metadata)} metadata dicts")
        )
    result = ScoreResult(rewards=[])
    for i, (response, answer) in enumerate(zip(responses, answers)):
        meta = metadata[i] if metadata is not None else {}
        problem = None
        try:
            value = call_with_timeout(reward_fn, timeout_s, response, answer, **meta)
            if isinstance(value, bool) or isinstance(value, (int, float)) and math.isfinite(value):
                reward = float(value)
            else:
                problem = f"returned {value!r}, not a finite number"
        except VerifierTimeout as e:
            problem = str(e)
            result.num_timeouts += 1
        except Exception as e:  # the reward function's own bug or a malformed answer: reward 0, counted
            problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            reward = 0.0
            result.num_errors += 1
            result.failed.append(i)
            if result.first_error is None:
                result.first_error = f"response {i}: {problem}"
        result.rewards.append(reward)
    if result.num_errors:
        name = getattr(reward_fn, "__qualname__", repr(reward_fn))
        logger.warning(
            "reward function %s failed on %d of %d responses (%d timed out), scored 0; first: %s",
            name, result.num_errors, len(responses), result.num_timeouts, result.first_error,
        )
    return result
