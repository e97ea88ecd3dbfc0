"""Synthetic reasoning task: multi-step integer arithmetic solved one line per step.

Text format (what the RL trainer feeds and what the tiny base policy was trained on)::

    prompt   = "Q: 3+4*2-5=\\n"
    response = "4*2=8\\n3+8=11\\n11-5=6\\nA: 6"      (then the tokenizer's EOS)

Solving order: every multiplication first, left to right; then additions and subtractions left to right.
Each step is one binary operation ``a<op>b=c``; the final line is ``A: <answer>``. Intermediate values
may be negative (``3-8=-5``). No multiplication chains (``2*3*4``) by default, so products stay below 100
and a ~1M-parameter model can partially learn the task.

Train/test splits are disjoint by construction: an expression's split is a hash of its text, so the same
expression can never land in both, whatever the sizes asked for. Everything is deterministic from a seed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

PROMPT_PREFIX = "Q: "
PROMPT_SUFFIX = "=\n"
ANSWER_PREFIX = "A: "
SPLITS = ("train", "test")

_TOKEN_RE = re.compile(r"\d+|[+\-*]")


@dataclass(frozen=True)
class Problem:
    expression: str  # e.g. "3+4*2-5"
    steps: tuple[str, ...]  # e.g. ("4*2=8", "3+8=11", "11-5=6")
    answer: int  # e.g. 6

    @property
    def prompt(self) -> str:
        return format_prompt(self.expression)

    @property
    def response(self) -> str:
        return format_response(self.steps, self.answer)


def format_prompt(expression: str) -> str:
    return f"{PROMPT_PREFIX}{expression}{PROMPT_SUFFIX}"


def format_response(steps: tuple[str, ...] | list[str], answer: int) -> str:
    return "\n".join([*steps, f"{ANSWER_PREFIX}{answer}"])


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def solve(expression: str, slips: dict[int, int] | None = None, *, left_to_right: bool = False) -> Problem:
    """Solve ``expression`` step by step.

    ``slips`` maps a step index to an amount added to that step's result: the error then propagates
    through the later steps exactly as a careless solver's would (used to make imperfect demonstrations).
    ``left_to_right`` makes the classic precedence mistake: every operation strictly left to right
    (``3+4*2`` -> ``3+4=7``, ``7*2=14``), a systematic error rather than a random slip.
    """
    tokens = _TOKEN_RE.findall(expression)
    if "".join(tokens) != expression or len(tokens) % 2 == 0:
        raise ValueError(f"not an arithmetic expression of non-negative integers and + - *: {expression!r}")
    values = [int(t) for t in tokens[0::2]]
    ops = list(tokens[1::2])
    slips = slips or {}
    steps: list[str] = []

    def step(a: int, op: str, b: int) -> int:
        c = _apply(a, op, b) + slips.get(len(steps), 0)
        steps.append(f"{a}{op}{b}={c}")
        return c

    i = 0
    while i < len(ops) and not left_to_right:  # multiplications first, left to right
        if ops[i] == "*":
            values[i : i + 2] = [step(values[i], "*", values[i + 1])]
            del ops[i]
        else:
            i += 1
    acc = values[0]
    for op, b in zip(ops, values[1:]):  # then + and -, left to right
        acc = step(acc, op, b)
    return Problem(expression=expression, steps=tuple(steps), answer=acc)


def sample_expression(
    rng: random.Random, min_steps: int = 2, max_steps: int = 4, max_operand: int = 9, chained_mul: bool = False
) -> str:
    """One random expression with ``min_steps..max_steps`` operators and operands in ``1..max_operand``."""
    n_ops = rng.randint(min_steps, max_steps)
    parts = [str(rng.randint(1, max_operand))]
    prev = ""
    for _ in range(n_ops):
        op = rng.choice("+-" if (prev == "*" and not chained_mul) else "+-*")
        parts += [op, str(rng.randint(1, max_operand))]
        prev = op
    return "".join(parts)


def split_of(expression: str, test_fraction: float = 0.1) -> str:
    """The split an expression belongs to: a fixed hash of its text (seed-independent, so splits never overlap)."""
    h = int.from_bytes(hashlib.sha256(expression.encode()).digest()[:8], "big")
    return "test" if h < test_fraction * 2**64 else "train"


def draw_distinct(n: int, split: str, test_fraction: float, sample, solve) -> list[Problem]:
    """Up to ``n`` distinct problems of ``split``: ``sample()`` draws an expression, ``solve`` makes it a problem
    (at most 200 n + 1000 draws; a caller that gets fewer than ``n`` says why in its own terms)."""
    seen: set[str] = set()
    problems: list[Problem] = []
    for _ in range(200 * n + 1000):
        if len(problems) == n:
            break
        expr = sample()
        if expr in seen or split_of(expr, test_fraction) != split:
            continue
        seen.add(expr)
        problems.append(solve(expr))
    return problems


def generate_split(
    split: str,
    n: int,
    seed: int = 0,
    *,
    min_steps: int = 2,
    max_steps: int = 4,
    max_operand: int = 9,
    test_fraction: float = 0.1,
) -> list[Problem]:
    """``n`` distinct problems of ``split`` ("train" or "test"), deterministic from ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"spro-synthetic-arithmetic/{seed}/{split}")  # str seeds hash with sha512: stable
    problems = draw_distinct(n, split, test_fraction,
                             lambda: sample_expression(rng, min_steps, max_steps, max_operand), solve)
    if len(problems) < n:
        raise ValueError(
            f"could draw only {len(problems)} distinct {split} problems of the {n} asked for "
            f"(steps {min_steps}-{max_steps}, operands 1-{max_operand}): ask for fewer or widen the task"
        )
    return problems


def problem_to_row(p: Problem) -> dict:
    """The dataset row: ``prompt`` and ``answer`` (as the prompt loaders expect) plus metadata."""
    return {
        "prompt": p.prompt,
        "answer": str(p.answer),
        "solution": p.response,
        "num_steps": len(p.steps),
    }


def write_split_jsonl(path: str | Path, split: str, n: int, seed: int = 0, **task_kwargs) -> Path:
    """Write ``n`` problems of ``split`` to a JSONL prompt dataset at ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in generate_split(split, n, seed, **task_kwargs):
            f.write(json.dumps(problem_to_row(p)) + "\n")
    return path
