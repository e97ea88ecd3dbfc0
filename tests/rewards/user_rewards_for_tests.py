"""User reward functions, loaded by the tests through "module:function" names as a config would."""

import time


def exact_match(response_text: str, answer: str, **meta) -> float:
    return float(response_text.strip() == answer.strip())


def weighted(response_text: str, answer: str, weight: float = 1.0, **meta) -> float:
    return weight * float(answer in response_text)


def raises(response_text: str, answer: str, **meta) -> float:
    raise RuntimeError("broken reward function")


def sleeps(response_text: str, answer: str, **meta) -> float:
    time.sleep(30)
    return 1.0


def spins_and_swallows(response_text: str, answer: str, **meta) -> float:
    try:
        while True:
            pass
    except Exception:  # the time limit must not be swallowed by a broad except
        return 1.0


def returns_nan(response_text: str, answer: str, **meta) -> float:
    return float("nan")


class Scorers:
    @staticmethod
    def contains(response_text: str, answer: str, **meta) -> float:
        return float(answer in response_text)


not_callable = 3
