"""The shipped tiny base of the harder task (chain): same shape as the quickstart base, speaks the chain
format, and starts well below the ceiling (so the outcome reward is sparse and RL has room)."""

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spro_mcore.assets import TINY_BASE_CHAIN_DIR, TINY_BASE_DIR
from spro_mcore.data.synthetic_chain import generate_split, solve
from spro_mcore.rewards.synthetic_arithmetic import arithmetic_reward

pytestmark = pytest.mark.unit

CARD = json.loads((TINY_BASE_CHAIN_DIR / "card.json").read_text())


def test_files_size_and_shape():
    assert sum(p.stat().st_size for p in TINY_BASE_CHAIN_DIR.iterdir()) < 5_000_000
    chain = json.loads((TINY_BASE_CHAIN_DIR / "config.json").read_text())
    quick = json.loads((TINY_BASE_DIR / "config.json").read_text())
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings"):
        assert chain[key] == quick[key], key
    assert CARD["made_by"] == "tools/make_tiny_base.py" and CARD["args"]["task"] == "chain"


@torch.no_grad()
def test_greedy_policy_speaks_the_chain_format_and_starts_low():
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(TINY_BASE_CHAIN_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_BASE_CHAIN_DIR).eval()
    problems = generate_split("test", 64, seed=0)
    tok.padding_side = "left"
    enc = tok([p.prompt for p in problems], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=128, do_sample=False)[:, enc["input_ids"].shape[1]:]
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in out.tolist()]
    assert sum(t.split("\n")[-1].startswith("A: ") for t in texts) >= 60
    acc = sum(arithmetic_reward(t, str(p.answer)) for t, p in zip(texts, problems)) / len(problems)
    assert 0.05 <= acc <= 0.7, acc  # well below the ceiling, not hopeless
    assert 0.05 <= CARD["greedy_acc"] <= 0.7 and CARD["held_out"]["problems"] == 500


def test_chain_demonstrations_mix_both_mistakes_and_per_step_slips():
    path = Path(__file__).resolve().parents[2] / "tools" / "make_tiny_base.py"
    spec = importlib.util.spec_from_file_location("make_tiny_base", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    a = CARD["args"]
    problems = generate_split("train", 2000, seed=0)
    demos = tool.chain_demonstrations(problems, a["step_slip_prob"], a["left_to_right_prob_chain"],
                                      a["drop_parens_prob"], random.Random(0))
    kinds = {"correct": 0, "left_to_right": 0, "drop_parens": 0, "other": 0}
    for p, d in zip(problems, demos):
        match = [s for s in ("correct", "left_to_right", "drop_parens") if solve(p.expression, strategy=s).response == d]
        kinds[match[0] if match else "other"] += 1
    n = len(problems)
    # a demo is unslipped with prob (1 - p)^steps ~ 0.87; identical strategies count as "correct" first (then
    # left to right), so a mistake's share is below its probability and "correct" gains what coincides
    ltr, dp = a["left_to_right_prob_chain"], a["drop_parens_prob"]
    assert 0.8 * (1 - ltr - dp) < kinds["correct"] / n < (1 - ltr - dp) + 0.5 * (ltr + dp), kinds
    assert 0.5 * ltr < kinds["left_to_right"] / n < ltr and 0.3 * dp < kinds["drop_parens"] / n < dp, kinds
    assert 0.08 < kinds["other"] / n < 0.2, kinds
