"""The harder synthetic task ("chain"): 5-9 operations with parentheses, solved one line per step.

Same text format as ``synthetic_arithmetic`` (and so the same outcome verifier), only longer::

    prompt   = "Q: 3*(4+2)-5+7*2-1=\\n"
    response = "4+2=6\\n3*6=18\\n7*2=14\\n18-5=13\\n13+14=27\\n27-1=26\\nA: 26"   (then EOS)

Solving order: every parenthesised group first (a group is ``(a+b)`` or ``(a-b)``), left to right; then
every multiplication, left to right; then additions and subtractions, left to right. A group counts as an
operand, and two multiplications never follow each other (``2*(3+4)*5`` is not drawn), so values stay in
the hundreds. With 6-10 step lines a response is two to three times longer than the quickstart task's, and
one wrong step anywhere makes the answer wrong: the outcome reward says *that* something failed, not where.

Two systematic mistakes for imperfect demonstrations (``tools/make_tiny_base.py --task chain``):
``left_to_right`` (groups first, then every operation strictly left to right) and ``drop_parens``
(precedence right, parentheses ignored: ``3*(4+2)`` -> ``3*4=12``, ``12+2=14``).

Splits are disjoint by the same text hash as the quickstart task; everything is deterministic from a seed.
"""

from __future__ import annotations

import random
import re

from spro_mcore.data.synthetic_arithmetic import Problem, draw_distinct

STRATEGIES = ("correct", "left_to_right", "drop_parens")

_TOKEN_RE = re.compile(r"\(\d+[+\-]\d+\)|\d+|[+\-*]")
_GROUP_RE = re.compile(r"\((\d+)([+\-])(\d+)\)")


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def solve(expression: str, slips: dict[int, int] | None = None, *, strategy: str = "correct") -> Problem:
    """Solve ``expression`` step by step with ``strategy`` (one of :data:`STRATEGIES`).

    ``slips`` maps a step index to an amount added to that step's result; the error then propagates through
    the later steps as a careless solver's would.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if strategy == "drop_parens":  # the same expression read without its parentheses
        return _solve_flat(expression, expression.replace("(", "").replace(")", ""), slips or {}, False)
    return _solve_flat(expression, expression, slips or {}, strategy == "left_to_right")


def _solve_flat(expression: str, text: str, slips: dict[int, int], left_to_right: bool) -> Problem:
    tokens = _TOKEN_RE.findall(text)
    if "".join(tokens) != text or len(tokens) % 2 == 0 or any(t in "+-*" for t in tokens[0::2]):
        raise ValueError(f"not a chain expression (integers, + - *, groups (a+b) / (a-b)): {expression!r}")
    steps: list[str] = []

    def step(a: int, op: str, b: int) -> int:
        c = _apply(a, op, b) + slips.get(len(steps), 0)
        steps.append(f"{a}{op}{b}={c}")
        return c

    values: list[int] = []
    for t in tokens[0::2]:  # groups first, left to right
        g = _GROUP_RE.fullmatch(t)
        values.append(step(int(g[1]), g[2], int(g[3])) if g else int(t))
    ops = list(tokens[1::2])
    i = 0
    while i < len(ops) and not left_to_right:  # then multiplications, left to right
        if ops[i] == "*":
            values[i : i + 2] = [step(values[i], "*", values[i + 1])]
            del ops[i]
        else:
            i += 1
    acc = values[0]
    for op, b in zip(ops, values[1:]):  # then + and -, left to right
        acc = step(acc, op, b)
    return Problem(expression=expression, steps=tuple(steps), answer=acc)


def sample_expression(rng: random.Random, min_steps: int = 5, max_steps: int = 9, max_operand: int = 9,
                      group_prob: float = 0.12) -> str:
    """``min_steps..max_steps`` operations in all (a group's own operation included); each operand is a
    parenthesised group with probability ``group_prob`` while the operation budget allows one (a group's value is positive)."""
    n_ops = rng.randint(min_steps, max_steps)

    def operand(budget: int) -> tuple[str, int]:
        if budget >= 1 and rng.random() < group_prob:
            a, op = rng.randint(2, max_operand), rng.choice("+-")
            b = rng.randint(1, max_operand if op == "+" else a - 1)  # a group's value is positive
            return f"({a}{op}{b})", 1
        return str(rng.randint(1, max_operand)), 0

    first, used = operand(n_ops - 1)
    parts, prev = [first], ""
    while used < n_ops:
        op = rng.choice("+-" if prev == "*" else "+-*")
        used += 1
        term, cost = operand(n_ops - used)
        parts += [op, term]
        used += cost
        prev = op
    return "".join(parts)


def generate_split(split: str, n: int, seed: int = 0, *, min_steps: int = 5, max_steps: int = 9,
                   max_operand: int = 9, test_fraction: float = 0.1) -> list[Problem]:
    """``n`` distinct problems of ``split`` ("train" or "test"), deterministic from ``seed``."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected train or test")
    rng = random.Random(f"spro-synthetic-chain/{seed}/{split}")  # str seeds hash with sha512: stable
    problems = draw_distinct(n, split, test_fraction,
                             lambda: sample_expression(rng, min_steps, max_steps, max_operand), solve)
    if len(problems) < n:
        raise ValueError(f"could draw only {len(problems)} distinct {split} chain problems of the {n} asked for")
    return problems
