"""Exact-answer verifier for the synthetic arithmetic task (``spro_mcore.data.synthetic_arithmetic``).

Reward 1.0 when the response's final-answer line ``A: <integer>`` equals the ground truth, else 0.0. Only
the last such line counts (a model that corrects itself is judged by its last word); the step lines are
not checked: this is an outcome reward.
"""

from __future__ import annotations

import re

from spro_mcore.data.synthetic_arithmetic import ANSWER_PREFIX

_ANSWER_LINE = re.compile(rf"^{re.escape(ANSWER_PREFIX.strip())}\s*(-?\d+)\s*$", re.MULTILINE)


def extract_final_answer(response_text: str) -> int | None:
    """The integer of the last ``A: <integer>`` line, or None when there is none."""
    found = _ANSWER_LINE.findall(response_text)
    return int(found[-1]) if found else None


def arithmetic_reward(response_text: str, answer: str, **meta) -> float:
    """1.0 if the final ``A:`` line equals ``answer`` (an integer string), else 0.0."""
    predicted = extract_final_answer(response_text)
    return float(predicted is not None and predicted == int(answer))
