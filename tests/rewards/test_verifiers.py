import pytest

from spro_mcore.data.synthetic_arithmetic import generate_split, solve
from spro_mcore.rewards.math_verify_reward import math_reward
from spro_mcore.rewards.synthetic_arithmetic import arithmetic_reward, extract_final_answer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("response, answer, expected", [
    (r"Half of it: $\boxed{1/2}$", "0.5", 1.0),
    (r"so $\boxed{\frac{1}{2}}$", r"\frac{1}{2}", 1.0),
    (r"The answer is $\boxed{0.5}$.", "1/2", 1.0),
    (r"first 3, then \boxed{6}; checking with 7 gives nothing", "6", 1.0),  # boxed wins over later numbers
    (r"$\boxed{x^2+2x}$", "x(x+2)", 1.0),
    (r"$\boxed{\sqrt{2}}$", r"\sqrt 2", 1.0),
    (r"$\boxed{2}$", r"\sqrt 2", 0.0),
    ("The answer is 7", "6", 0.0),
    (r"$\boxed{-1/2}$", "0.5", 0.0),
    ("no number at all", "6", 0.0),
    ("", "6", 0.0),
])
def test_math_verifier(response, answer, expected):
    assert math_reward(response, answer) == expected


def test_math_verifier_rejects_unparsable_ground_truth():
    with pytest.raises(ValueError, match="cannot parse the ground-truth answer ''"):
        math_reward(r"\boxed{1}", "")


def test_arithmetic_verifier_on_generated_solutions():
    for p in generate_split("test", 200, seed=1):
        assert arithmetic_reward(p.response, str(p.answer)) == 1.0
        wrong = solve(p.expression, slips={0: 1})  # one slip: the final line is off by one
        assert arithmetic_reward(wrong.response, str(p.answer)) == 0.0


@pytest.mark.parametrize("response, parsed", [
    ("4*2=8\n3+8=11\n11-5=6\nA: 6", 6),
    ("9+1=10\n10-12=-2\nA: -2", -2),
    ("A: 5\nA: 7", 7),  # the last answer line counts
    ("A: 6 apples", None),  # not an integer line
    ("4*2=8\n3+8=11", None),  # no answer line (e.g. truncated)
    ("B: 6", None),
])
def test_final_answer_extraction(response, parsed):
    assert extract_final_answer(response) == parsed
    assert arithmetic_reward(response, "6") == float(parsed == 6)
