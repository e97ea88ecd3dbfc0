"""Math verifier built on Hugging Face ``math-verify``: final answer (``\\boxed{}`` first) vs the ground truth.

math-verify's own time limits use ``signal.alarm``, which raises in any thread but the main one and would
also clobber the time limit of :mod:`spro_mcore.rewards.scoring`. They are switched off here
(``parsing_timeout=None``, ``timeout_seconds=None``); the scorer bounds every call instead.
"""

from __future__ import annotations

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

_GOLD_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
# boxed answers win over any other number in a response; otherwise the last expression counts
_PRED_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def _parse_gold(answer: str):
    # a bare ground truth ("\sqrt 2", "x(x+2)") is read whole as LaTeX; unwrapped, math-verify would pick
    # the last number out of it ("2")
    text = answer if ("$" in answer or "\\boxed" in answer) else f"\\boxed{{{answer}}}"
    gold = parse(text, extraction_config=_GOLD_CONFIG, parsing_timeout=None)
    if not gold:
        raise ValueError(f"math-verify cannot parse the ground-truth answer {answer!r}")
    return gold


def math_reward(response_text: str, answer: str, **meta) -> float:
    """1.0 if the response's final answer is mathematically equal to ``answer``, else 0.0.

    A ground truth that math-verify cannot parse raises (the scorer counts it as a verifier error): that
    is a data problem, not a wrong response.
    """
    gold = _parse_gold(str(answer))
    pred = parse(response_text, extraction_config=_PRED_CONFIG, parsing_timeout=None)
    if not pred:
        return 0.0
    return float(verify(gold, pred, timeout_seconds=None))
