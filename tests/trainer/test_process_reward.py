"""The verifier process reward against HF transformers (the verifier's body run by transformers, its head applied
at the prompt's last token and each step's last token, by hand), and the Monte-Carlo process reward against a by-hand account: a stand-in engine (deterministic continuations)
and a stand-in scorer (a fixed pseudo-random outcome per text) on responses whose steps are known by
construction (the tiny base's tokenizer has one token per character): Q-hat of every step prefix but the last
is the mean outcome of its continuations, the last step's Q is the response's own outcome, V(prompt) is the
group's mean outcome, and the engine sees exactly the prefixes (one batched call, n_mc samples each)."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from spro_mcore.config import load_config
from spro_mcore.rollout.engine import Sample
from spro_mcore.trainer.process_reward import MonteCarloProcessReward, NoProcessReward, build_process_reward
from spro_mcore.trainer.rollout_batch import build_rollout_batch
from tests.pav.random_verifier import TINY

pytestmark = pytest.mark.unit


def outcome(text: str) -> float:
    return float(zlib.crc32(text.encode()) % 3 == 0)


class Engine:
    """Continuation j of a prefix is the digit (len(prefix) + j) % 10 then EOS."""

    def __init__(self, tok):
        self.tok, self.calls = tok, []

    def generate(self, prompts, sampling):
        self.calls.append((prompts, sampling))
        digit = lambda p, j: self.tok(str((len(p) + j) % 10), add_special_tokens=False)["input_ids"]
        return [[Sample(digit(p, j) + [0], [0.0, 0.0], "stop") for j in range(sampling.n)] for p in prompts]


class Scorer:
    def score_groups(self, texts, prompts):
        return [[outcome(t) for t in g] for g in texts], {}


def test_mc_q_hat_by_hand():
    tok = AutoTokenizer.from_pretrained(TINY)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    prompts = [SimpleNamespace(input_ids=enc("1+1="), answer="2", metadata={}),
               SimpleNamespace(input_ids=enc("22*3="), answer="66", metadata={})]
    responses = [["ab\ncd\ne", "x"], ["q\nr", "s\n\nt\nu"]]  # steps: 3, 1 | 2, 3 (an empty line joins its step)
    steps = [[["ab\n", "cd\n", "e"], ["x"]], [["q\n", "r"], ["s\n\n", "t\n", "u"]]]
    groups = [[Sample(enc(r) + [0], [0.0] * (len(enc(r)) + 1), "stop") for r in g] for g in responses]
    rewards = [[1.0, 0.0], [0.0, 0.0]]
    batch = build_rollout_batch([p.input_ids for p in prompts], groups, rewards, pad_id=1, group_offset=10)
    cfg = load_config(None, ["algo.estimator=pav", "algo.pav_source=mc", "algo.pav_n_mc=3"])
    layout = SimpleNamespace(tp=1, pp=1, dp_rank=0)
    engine = Engine(tok)
    process, cost = MonteCarloProcessReward(cfg, layout, tok, engine, Scorer())(batch, prompts, step=5)

    assert len(engine.calls) == 1  # every prefix in one engine call, n_mc samples each, seeded by the step
    sent, sampling = engine.calls[0]
    assert sampling.n == 3 and sampling.temperature == 1.0 and sampling.seed is not None
    want_prefixes, want_q, want_index = [], [], []
    for g, prompt in enumerate(prompts):
        for r, parts in enumerate(steps[g]):
            q, text = [], ""
            for h, part in enumerate(parts[:-1]):
                text += part
                prefix = list(prompt.input_ids) + enc(text)
                want_prefixes.append(prefix)
                conts = [str((len(prefix) + j) % 10) for j in range(3)]
                q.append(sum(outcome(text + c) for c in conts) / 3)
            q.append(rewards[g][r])
            want_q.append(q + [0.0] * (3 - len(q)))
            want_index.append([h for h, part in enumerate(parts) for _ in part] + [len(parts) - 1])  # EOS: last step
    assert sent == want_prefixes
    torch.testing.assert_close(process["step_q"], torch.tensor(want_q), rtol=0, atol=1e-7)
    torch.testing.assert_close(process["prompt_value"], torch.tensor([0.5, 0.5, 0.0, 0.0]), rtol=0, atol=0)
    for b, idx in enumerate(want_index):
        assert process["step_index"][b, :len(idx)].tolist() == idx
    assert cost["pav/prover_prefixes"] == len(want_prefixes) and cost["pav/prover_tokens"] == 2 * 3 * len(want_prefixes)
    assert cost["pav/verifier_tokens"] == 0
    # another step: another seed (fresh continuations), the same one again for the same step (exact resume)
    MonteCarloProcessReward(cfg, layout, tok, engine, Scorer())(batch, prompts, step=6)
    MonteCarloProcessReward(cfg, layout, tok, engine, Scorer())(batch, prompts, step=5)
    seeds = [c[1].seed for c in engine.calls]
    assert seeds[0] != seeds[1] and seeds[0] == seeds[2]


def test_grpo_and_spro_have_no_process_inputs_and_zero_cost():
    process, cost = NoProcessReward()(None, None, 0)
    assert process == {} and set(cost.values()) == {0.0}


def _batch(tok):
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    prompts = [SimpleNamespace(input_ids=enc("1+1="), answer="2", metadata={}),
               SimpleNamespace(input_ids=enc("22*3="), answer="66", metadata={})]
    responses = [["ab\ncd\ne", "x"], ["q\nr", "s\n\nt\nu"]]
    groups = [[Sample(enc(r) + [0], [0.0] * (len(enc(r)) + 1), "stop") for r in g] for g in responses]
    return prompts, build_rollout_batch([p.input_ids for p in prompts], groups, [[1.0, 0.0], [0.0, 1.0]], pad_id=1)


def _verifier_in_megatron(vdir):
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.trainer.process_reward import VerifierProcessReward

    initialize_model_parallel(1, 1)
    tok = AutoTokenizer.from_pretrained(TINY)
    prompts, batch = _batch(tok)
    # a token budget of 40: micro-batches of 2 rows (the padded length is 13-14)
    cfg = load_config(None, ["algo.estimator=pav", f"algo.pav_path={vdir}", "trainer.micro_batch_tokens=40"])
    return VerifierProcessReward(cfg, tok)(batch, prompts, 0)


def test_verifier_q_matches_hf_transformers(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.multiproc import run_in_processes
    from tests.pav.random_verifier import make_random_verifier

    vdir = make_random_verifier(tmp_path / "v")
    process, cost = run_in_processes(_verifier_in_megatron, 1, str(vdir), timeout=300)[0]
    tok = AutoTokenizer.from_pretrained(TINY)
    _, batch = _batch(tok)
    hf = AutoModelForCausalLM.from_pretrained(vdir, dtype=torch.float32, attn_implementation="eager").eval()
    head = load_file(str(vdir / "value_head.safetensors"))
    # the last token of each step, by hand (one token per character; EOS joins the last step)
    step_ends = [[3, 6, 8], [2], [2, 4], [3, 5, 7]]
    assert cost["pav/verifier_tokens"] == float(batch.total_lens.sum())
    for b, ends in enumerate(step_ends):
        n = int(batch.total_lens[b])
        with torch.no_grad():
            hidden = hf(batch.input_ids[b:b + 1, :n], output_hidden_states=True).hidden_states[-1][0]
        p = int(batch.prompt_lens[b])
        q = torch.sigmoid(hidden[[p - 1] + [p + e - 1 for e in ends]] @ head["value_head.weight"][0]
                          + head["value_head.bias"][0])
        torch.testing.assert_close(process["prompt_value"][b], q[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(process["step_q"][b, :len(ends)], q[1:], atol=1e-5, rtol=0)
        assert process["step_index"][b, ends[-1] - 1] == len(ends) - 1
    assert process["step_q"].std() > 1e-3  # the readings differ: the comparison is not of constants


def test_the_mc_prover_is_the_frozen_initial_policy_or_the_rollout_engine():
    rollout_engine, initial = object(), object()
    built = []
    make = lambda: built.append(initial) or initial
    layout = SimpleNamespace(tp=1, pp=1, dp_rank=0)
    for prover, want in (("initial", initial), ("current", rollout_engine)):
        cfg = load_config(None, ["algo.estimator=pav", "algo.pav_source=mc", f"algo.pav_prover={prover}"])
        pr = build_process_reward(cfg, layout, tokenizer=None, engine=rollout_engine, scorer=None, initial_engine=make)
        assert isinstance(pr, MonteCarloProcessReward) and pr.engine is want
    assert built == [initial]  # built once, for the initial prover only
    # a rank without the rollout engine builds no prover engine either
    cfg = load_config(None, ["algo.estimator=pav", "algo.pav_source=mc"])
    assert build_process_reward(cfg, layout, tokenizer=None, engine=None, scorer=None, initial_engine=make).engine is None
    assert len(built) == 1
