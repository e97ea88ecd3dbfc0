"""The harder synthetic task (chain): solving order, the two systematic mistakes, splits, and its selection
by ``data.synthetic_task`` (the quickstart task stays byte for byte what it was)."""

import json
import random
import re

import pytest

from spro_mcore.config import load_config
from spro_mcore.data import synthetic_arithmetic
from spro_mcore.data.synthetic_chain import generate_split, sample_expression, solve
from spro_mcore.data.splits import split_path
from spro_mcore.data.synthetic_tasks import write_task_split_jsonl
from spro_mcore.rewards.synthetic_arithmetic import arithmetic_reward

pytestmark = pytest.mark.unit


def test_solving_order_by_hand():
    p = solve("3*(4+2)-5+7*2-1")
    assert p.prompt == "Q: 3*(4+2)-5+7*2-1=\n"
    assert p.response == "4+2=6\n3*6=18\n7*2=14\n18-5=13\n13+14=27\n27-1=26\nA: 26"
    assert solve("3*(4+2)-5+7*2-1", strategy="left_to_right").steps == (
        "4+2=6", "3*6=18", "18-5=13", "13+7=20", "20*2=40", "40-1=39")
    assert solve("3*(4+2)-5+7*2-1", strategy="drop_parens").steps == (
        "3*4=12", "7*2=14", "12+2=14", "14-5=9", "9+14=23", "23-1=22")


def test_slips_propagate_to_the_answer():
    p = solve("3*(4+2)-5+7*2-1", {0: 1})
    assert p.steps[:2] == ("4+2=7", "3*7=21") and p.answer == 29


def test_problems_match_python_and_the_task_shape():
    problems = generate_split("train", 500, seed=3)
    assert len({p.expression for p in problems}) == 500
    n_parens = 0
    for p in problems:
        assert p.answer == eval(p.expression)  # independent reference: Python's own precedence
        assert 5 <= len(p.steps) <= 9
        assert "**" not in p.expression and not re.search(r"\*(\(\d[+-]\d\)|\d)\*", p.expression)
        n_parens += "(" in p.expression
        # the mistakes differ from the right answer often enough to be learnable mistakes
    assert 0.4 < n_parens / len(problems) < 0.8
    wrong_l2r = sum(solve(p.expression, strategy="left_to_right").answer != p.answer for p in problems)
    wrong_drop = sum(solve(p.expression, strategy="drop_parens").answer != p.answer for p in problems)
    assert wrong_l2r > 250 and wrong_drop > 150


def test_without_parentheses_it_is_the_quickstart_solver():
    rng = random.Random(0)
    for _ in range(200):
        expr = sample_expression(rng, group_prob=0.0)
        assert "(" not in expr
        assert solve(expr).response == synthetic_arithmetic.solve(expr).response
        assert solve(expr, strategy="left_to_right").response == synthetic_arithmetic.solve(expr, left_to_right=True).response


def test_splits_are_deterministic_and_disjoint():
    a, b = generate_split("test", 50, seed=1), generate_split("test", 50, seed=1)
    assert a == b
    train = {p.expression for p in generate_split("train", 2000, seed=1)}
    assert not train & {p.expression for p in generate_split("test", 200, seed=2)}


def test_the_outcome_verifier_reads_chain_responses():
    p = solve("9-(8-3)*2+4*5-6")
    assert arithmetic_reward(p.response, str(p.answer)) == 1.0
    assert arithmetic_reward(solve(p.expression, strategy="drop_parens").response, str(p.answer)) == 0.0


def test_config_selects_the_task_and_keeps_the_quickstart_files(tmp_path):
    files = {}
    for task in ("arithmetic", "chain"):
        cfg = load_config(None, [f"data.synthetic_task={task}", f"trainer.output_dir={tmp_path / task}",
                                 "data.synthetic_train_size=40", "data.synthetic_eval_size=10", "trainer.seed=5"])
        train = split_path(cfg, "train", tmp_path / task / "data")
        files[task] = [json.loads(l) for l in open(train)]
    assert all(5 <= r["num_steps"] <= 9 for r in files["chain"])
    assert files["chain"] == [synthetic_arithmetic.problem_to_row(p) for p in generate_split("train", 40, seed=5)]
    old = synthetic_arithmetic.write_split_jsonl(tmp_path / "old.jsonl", "train", 40, seed=5)
    assert (tmp_path / "arithmetic" / "data" / "synthetic_train.jsonl").read_bytes() == old.read_bytes()
    with pytest.raises(Exception, match="data.synthetic_task"):
        load_config(None, ["data.synthetic_task=chains"])
    with pytest.raises(ValueError, match="unknown synthetic task"):
        write_task_split_jsonl(tmp_path / "x.jsonl", "chains", "train", 1)
