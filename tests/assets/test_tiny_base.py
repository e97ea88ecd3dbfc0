"""The shipped tiny base policy: loads with HF Auto classes, has the agreed shape, speaks the task format."""

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from spro_mcore.assets import TINY_BASE_DIR
from spro_mcore.data.synthetic_arithmetic import generate_split, solve
from spro_mcore.rewards.synthetic_arithmetic import arithmetic_reward

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_BASE_DIR)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(TINY_BASE_DIR).eval()


def test_files_and_size():
    names = {p.name for p in TINY_BASE_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert sum(p.stat().st_size for p in TINY_BASE_DIR.iterdir()) < 5_000_000


def test_config(model, tokenizer):
    c = model.config
    assert c.model_type == "qwen2" and type(model).__name__ == "Qwen2ForCausalLM"
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (128, 4, 4, 2)
    assert c.hidden_size // c.num_attention_heads == 32  # vLLM's CPU backend rejects head size 16
    assert c.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert c.vocab_size == len(tokenizer) and c.vocab_size % 128 == 0
    assert c.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert c.pad_token_id == tokenizer.pad_token_id != c.eos_token_id
    assert model.dtype == torch.float32


@pytest.mark.parametrize("text", [
    "Q: 3+4*2-5=\n",
    "4*2=8\n3+8=11\n11-5=6\nA: 6",
    "9+1=10\n10-12=-2\nA: -2",
    "any other text, even non-ASCII: héllo ∑ 🙂\t  two  spaces",
    "specials <|endoftext|> and <|reserved_3|> inside text",
])
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # transformers picks its tokenizer class from config.json's model_type (qwen2) and rebuilds the
    # pipeline around tokenizer.json's vocab: it must encode exactly as the file itself does
    assert ids == Tokenizer.from_file(str(TINY_BASE_DIR / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def test_digits_are_single_tokens_and_prompt_response_split_cleanly(tokenizer):
    prompt, response = "Q: 12+34*5=\n", "34*5=170\n12+170=182\nA: 182"
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert p + r == tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    digits = [tokenizer.convert_ids_to_tokens(i) for i in r if tokenizer.decode([i]).isdigit()]
    assert digits and all(len(d) == 1 for d in digits)
    assert tokenizer(prompt)["input_ids"] == p  # no BOS or other specials added to plain prompts


@torch.no_grad()
def test_greedy_policy_speaks_the_format_and_is_partly_right(model, tokenizer):
    problems = generate_split("test", 100, seed=0)
    tokenizer.padding_side = "left"
    enc = tokenizer([p.prompt for p in problems], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=64, do_sample=False)[:, enc["input_ids"].shape[1]:]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in out.tolist()]
    assert all(tokenizer.eos_token_id in ids for ids in out.tolist())
    assert all(t.split("\n")[-1].startswith("A: ") for t in texts)
    acc = sum(arithmetic_reward(t, str(p.answer)) for t, p in zip(texts, problems)) / len(problems)
    card = json.loads((TINY_BASE_DIR / "card.json").read_text())
    assert 0.3 <= acc <= 0.8, acc  # room for RL to improve, but not hopeless
    assert 0.3 <= card["greedy_acc"] <= 0.8 and card["sampled_t1_acc"] < card["greedy_acc"]


def test_demonstrations_mix_the_precedence_mistake_and_slips():
    """The recipe the shipped base was made from (its card records the probabilities)."""
    path = Path(__file__).resolve().parents[2] / "tools" / "make_tiny_base.py"
    spec = importlib.util.spec_from_file_location("make_tiny_base", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    card = json.loads((TINY_BASE_DIR / "card.json").read_text())["args"]
    problems = generate_split("train", 2000, seed=0)
    demos = tool.demonstrations(problems, card["slip_prob"], card["left_to_right_prob"], random.Random(0))
    differ = l2r_demos = slipped = 0
    for p, d in zip(problems, demos):
        l2r = solve(p.expression, left_to_right=True).response
        if l2r != p.response:  # the orders disagree on the steps: a left-to-right demo is visible
            differ += 1
            l2r_demos += d == l2r
        slipped += d not in (p.response, l2r)
    n = len(problems)
    # left-to-right demos: P(l2r) x P(no slip) = 0.45 of the problems where the orders disagree
    assert 0.38 < l2r_demos / differ < 0.52, (l2r_demos, differ)
    assert 0.07 < slipped / n < 0.13, slipped
