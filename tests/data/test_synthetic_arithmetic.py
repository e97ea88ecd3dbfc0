import ast
import json
import operator
import re

import pytest

from spro_mcore.data.synthetic_arithmetic import (
    format_prompt,
    generate_split,
    solve,
    split_of,
    write_split_jsonl,
)

pytestmark = pytest.mark.unit

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def independent_eval(expression: str) -> int:
    """Evaluate with Python's own parser (precedence included), not the task's solver."""

    def ev(node):
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        assert isinstance(node, ast.Constant) and isinstance(node.value, int), ast.dump(node)
        return node.value

    return ev(ast.parse(expression, mode="eval").body)


STEP = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")


def test_hand_worked_example():
    p = solve("3+4*2-5")
    assert p.prompt == "Q: 3+4*2-5=\n"
    assert p.response == "4*2=8\n3+8=11\n11-5=6\nA: 6"
    assert p.answer == 6


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_solution_verifies(split):
    problems = generate_split(split, 2000, seed=3)
    for p in problems:
        assert p.answer == independent_eval(p.expression), p
        n_ops = len(re.findall(r"[+\-*]", p.expression))
        assert 2 <= len(p.steps) == n_ops <= 4
        for line in p.steps:  # each step is one correct binary operation on small numbers
            a, op, b, c = STEP.match(line).groups()
            assert _OPS[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult}[op]](int(a), int(b)) == int(c), line
        last = STEP.match(p.steps[-1]).groups()[3]
        assert int(last) == p.answer
        lines = p.response.split("\n")
        assert lines[:-1] == list(p.steps) and lines[-1] == f"A: {p.answer}"


def test_splits_are_deterministic_disjoint_and_distinct():
    train = generate_split("train", 3000, seed=0)
    assert train == generate_split("train", 3000, seed=0)
    assert train != generate_split("train", 3000, seed=1)
    test = generate_split("test", 300, seed=0)
    train_exprs, test_exprs = {p.expression for p in train}, {p.expression for p in test}
    assert len(train_exprs) == 3000 and len(test_exprs) == 300
    assert not train_exprs & test_exprs
    # splits are set by the expression alone: another seed's test problems are still test problems
    assert all(split_of(p.expression) == "test" for p in generate_split("test", 100, seed=7))


def test_slip_propagates_to_a_wrong_answer():
    p = solve("3+4*2-5", slips={1: 1})
    assert p.steps == ("4*2=8", "3+8=12", "12-5=7") and p.answer == 7


def independent_left_to_right(expression: str) -> int:
    """The precedence mistake, computed independently: fold the tokens strictly left to right."""
    tokens = re.findall(r"\d+|[+\-*]", expression)
    acc = int(tokens[0])
    for op, b in zip(tokens[1::2], tokens[2::2]):
        acc = {"+": operator.add, "-": operator.sub, "*": operator.mul}[op](acc, int(b))
    return acc


def test_left_to_right_is_the_precedence_mistake():
    p = solve("3+4*2-5", left_to_right=True)
    assert p.steps == ("3+4=7", "7*2=14", "14-5=9") and p.answer == 9
    problems = generate_split("test", 500, seed=0)
    differ = 0
    for q in problems:
        wrong = solve(q.expression, left_to_right=True)
        assert wrong.answer == independent_left_to_right(q.expression) and len(wrong.steps) == len(q.steps)
        differ += wrong.answer != q.answer
    assert 0.3 < differ / len(problems) < 0.6  # wrong on a good share of problems, right on the others


def test_bad_requests_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        generate_split("dev", 1)
    with pytest.raises(ValueError, match="could draw only"):
        generate_split("train", 10_000, min_steps=1, max_steps=1, max_operand=3)
    with pytest.raises(ValueError, match="not an arithmetic expression"):
        solve("3+(4*2)")


def test_write_split_jsonl(tmp_path):
    path = write_split_jsonl(tmp_path / "sub" / "test.jsonl", "test", 50, seed=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 50
    expected = generate_split("test", 50, seed=0)
    assert [r["prompt"] for r in rows] == [format_prompt(p.expression) for p in expected]
    assert [r["answer"] for r in rows] == [str(p.answer) for p in expected]
    assert rows[0]["solution"].endswith(f"A: {rows[0]['answer']}")
