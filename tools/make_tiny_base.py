"""Make the tiny base policy shipped at ``spro_mcore/assets/tiny_base/`` (deterministic from ``--seed``).

1. Train a small tokenizer with the ``tokenizers`` library: byte-level BPE in Qwen2's style (digits are
   always single tokens, so numbers are spelled digit by digit; any text round-trips), the few merges the
   task text offers, specials ``<|endoftext|>`` (EOS) and ``<|pad|>``, padded with reserved special tokens
   to a vocabulary of 384 (a multiple of 128).
2. Build a Qwen2 model (hidden 128, 4 layers, 4 heads / 2 KV heads: head_dim 32, tied embeddings).
3. Supervised fine-tuning on the synthetic arithmetic task from *imperfect* demonstrations: half of them
   ignore operator precedence (``3+4*2`` solved left to right: a systematic mistake, wrong on about half of
   the problems), and a few carry a random arithmetic slip. The policy learns the step format, EOS and the
   arithmetic, and both strategies: greedy accuracy starts well below what the policy can do, and sampling
   finds right answers often enough that RL has a signal to learn which strategy the reward prefers.
4. Save in HF format (float32 safetensors) and print held-out greedy and sampled (T=1) accuracy.

Whether such a small model learns to *complete* a precedence solution (find the ``*``, then carry the
partial results) depends on the seed. On 128 held-out problems where the strategies disagree, seed 0's base
follows precedence in 25% of greedy answers but finishes right in only 8% of 4 samples (RL sees almost no
right answer there and does not learn); seed 1's is already mostly right (greedy 0.70); seed 2's (the
default, shipped) chooses precedence in 35% of greedy answers and gets 31% right within 4 samples: greedy
accuracy 0.65 with room that RL can reach.

Prompt format (plain text, no chat template): ``"Q: 3+4*2-5=\\n"``; response ``"4*2=8\\n3+8=11\\n11-5=6\\nA: 6"``
followed by EOS. See ``spro_mcore/data/synthetic_arithmetic.py``.

The harder task (``--task chain``, shipped at ``spro_mcore/assets/tiny_base_chain/``; see
``spro_mcore/data/synthetic_chain.py``): the same tokenizer recipe, model shape and SFT, on 5-9-operation
problems with parentheses; each demonstration follows one of three strategies (right, left to right, or
parentheses ignored: two systematic mistakes), and every step of it slips with a small probability, so an
error is possible at any step of a long response. Shipped: ``--task chain --seed 3 --steps 5000
--left-to-right-prob-chain 0.35 --drop-parens-prob 0.35`` (30% of demonstrations right): held-out greedy
accuracy 0.60 and sampled (T=1) 0.40 on 500 problems; 10 min of SFT on 2 cores. Earlier chain bases, kept
in the record (README, issue 13): 0.25/0.25 at 2500 steps (seed 2) was too weak for RL to learn anything
(greedy 0.17, sampled 0.07); 0.15/0.15 at 3000 steps (seed 3) answered greedily with the right strategy
already (greedy 0.56, sampled 0.25: the failures were the small model's slips, which 60 RL steps do not
move); with 35% of demonstrations per mistake the greedy answer itself often takes a wrong strategy.

Usage: ``python tools/make_tiny_base.py [--task arithmetic|chain] [--out DIR] [--seed 2]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

# OpenMP's default busy-waiting makes 2 threads ~20x slower when other processes share the 2 cores;
# must be set before torch loads OpenMP
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX  # noqa: E402

from spro_mcore.data import synthetic_chain  # noqa: E402
from spro_mcore.data.synthetic_arithmetic import Problem, generate_split, solve  # noqa: E402
from spro_mcore.rewards.synthetic_arithmetic import arithmetic_reward  # noqa: E402

EOS, PAD = "<|endoftext|>", "<|pad|>"
VOCAB_MULTIPLE = 128
ASSETS = Path(__file__).resolve().parents[1] / "spro_mcore" / "assets"
DEFAULT_OUT = {"arithmetic": ASSETS / "tiny_base", "chain": ASSETS / "tiny_base_chain"}
CHAIN_ONLY_ARGS = ("task", "step_slip_prob", "left_to_right_prob_chain", "drop_parens_prob")


def build_tokenizer(corpus: list[str], max_merges: int = 32) -> PreTrainedTokenizerFast:
    # Byte-level BPE with exactly Qwen2's normalizer, pre-tokenizer and decoder: for a model_type "qwen2"
    # checkpoint, transformers' AutoTokenizer (and so vLLM) rebuilds that pipeline around tokenizer.json's
    # vocab and merges, whatever the file says. Qwen2's split regex makes every digit its own token.
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2 + 256 + max_merges,  # the task text offers only a few merges (e.g. "=\n")
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text round-trips
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    # reserved specials pad the vocabulary to a multiple of 128, so that every model id decodes
    tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(-tok.get_vocab_size() % VOCAB_MULTIPLE)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, model_max_length=512)
    assert len(hf) % VOCAB_MULTIPLE == 0, len(hf)
    return hf


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,  # head_dim 32: the smallest vLLM's CPU backend accepts
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        max_window_layers=4,  # no sliding window anywhere (it is off anyway)
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def demonstrations(problems: list[Problem], slip_prob: float, left_to_right_prob: float,
                   rng: random.Random) -> list[str]:
    """Responses to imitate: with probability ``left_to_right_prob`` the demonstrator ignores operator
    precedence (a systematic mistake: the policy learns both strategies and must find, by reward, which one
    is right); with probability ``slip_prob`` one step's result is off by a small amount (a random one)."""
    out = []
    for p in problems:
        l2r = rng.random() < left_to_right_prob
        slips = {}
        if rng.random() < slip_prob:
            slips = {rng.randrange(len(p.steps)): rng.choice([-10, -2, -1, 1, 1, 2, 10])}
        out.append(solve(p.expression, slips, left_to_right=l2r).response)
    return out


def chain_demonstrations(problems: list[Problem], step_slip_prob: float, left_to_right_prob: float,
                         drop_parens_prob: float, rng: random.Random) -> list[str]:
    """Chain-task responses to imitate: the demonstrator solves left to right with probability
    ``left_to_right_prob``, ignores the parentheses with probability ``drop_parens_prob``, else solves
    right; each of its steps independently slips by a small amount with probability ``step_slip_prob``."""
    out = []
    for p in problems:
        u = rng.random()
        strategy = ("left_to_right" if u < left_to_right_prob
                    else "drop_parens" if u < left_to_right_prob + drop_parens_prob else "correct")
        n_steps = len(synthetic_chain.solve(p.expression, strategy=strategy).steps)
        slips = {i: rng.choice([-10, -2, -1, 1, 1, 2, 10]) for i in range(n_steps) if rng.random() < step_slip_prob}
        out.append(synthetic_chain.solve(p.expression, slips, strategy=strategy).response)
    return out


def encode_examples(tokenizer, prompts: list[str], responses: list[str]) -> list[tuple[list[int], int]]:
    """Token ids of prompt + response + EOS, and the number of prompt tokens (not trained on)."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return [(p + r + [tokenizer.eos_token_id], len(p)) for p, r in zip(p_ids, r_ids)]


def sft(model, tokenizer, examples, steps: int, batch_size: int, lr: float, seed: int, log_every: int = 100,
        every: int = 0, callback=None):
    g = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    order: list[int] = []
    for step in range(steps):
        if len(order) < batch_size:
            order += g.sample(range(len(examples)), len(examples))
        batch = [examples[i] for i in order[:batch_size]]
        del order[:batch_size]
        T = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), T), tokenizer.pad_token_id)
        labels = torch.full((len(batch), T), -100)
        attn = torch.zeros((len(batch), T), dtype=torch.long)
        for b, (ids, n_prompt) in enumerate(batch):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            labels[b, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
            attn[b, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.2e}", flush=True)
        if callback and every and (step + 1) % every == 0:
            model.eval()
            callback(step + 1)
            model.train()
    model.eval()


@torch.no_grad()
def accuracy(model, tokenizer, problems: list[Problem], do_sample: bool, seed: int = 0, batch_size: int = 256,
             max_new_tokens: int = 64):
    """Fraction of ``problems`` whose generated response has the right ``A:`` line (and the EOS rate)."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    correct = ended = 0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        enc = tokenizer([p.prompt for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=1.0 if do_sample else None,
            top_k=0 if do_sample else None, top_p=1.0 if do_sample else None,
        )
        gen = out[:, enc["input_ids"].shape[1] :]
        for p, ids in zip(chunk, gen.tolist()):
            ended += tokenizer.eos_token_id in ids
            text = tokenizer.decode(ids, skip_special_tokens=True)
            correct += arithmetic_reward(text, str(p.answer)) == 1.0
    return correct / len(problems), ended / len(problems)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(DEFAULT_OUT), default="arithmetic")
    ap.add_argument("--out", type=Path, default=None, help="default: spro_mcore/assets/tiny_base[_chain]")
    ap.add_argument("--seed", type=int, default=2)  # see the docstring: seed 0 rarely completes a precedence solution
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--eval-size", type=int, default=500)
    ap.add_argument("--slip-prob", type=float, default=0.1)
    ap.add_argument("--left-to-right-prob", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--step-slip-prob", type=float, default=0.02, help="chain: per-step slip probability")
    ap.add_argument("--left-to-right-prob-chain", type=float, default=0.25, help="chain: left-to-right demos")
    ap.add_argument("--drop-parens-prob", type=float, default=0.25, help="chain: parentheses-ignored demos")
    ap.add_argument("--eval-every", type=int, default=0, help="also report greedy accuracy every N steps")
    args = ap.parse_args(argv)
    args.out = args.out or DEFAULT_OUT[args.task]
    chain = args.task == "chain"
    max_new_tokens = 128 if chain else 64
    torch.set_num_threads(2)
    t0 = time.time()

    split = synthetic_chain.generate_split if chain else generate_split
    train = split("train", args.train_size, seed=args.seed)
    test = split("test", args.eval_size, seed=args.seed)
    corpus = [p.prompt + p.response for p in train]
    tokenizer = build_tokenizer(corpus)
    model = build_model(tokenizer, args.seed)
    print(f"vocab {len(tokenizer)}, params {sum(p.numel() for p in model.parameters()):,}")

    if chain:
        demos = chain_demonstrations(train, args.step_slip_prob, args.left_to_right_prob_chain,
                                     args.drop_parens_prob, random.Random(args.seed))
    else:
        demos = demonstrations(train, args.slip_prob, args.left_to_right_prob, random.Random(args.seed))
    examples = encode_examples(tokenizer, [p.prompt for p in train], demos)
    def report(step):  # exploration only; harmless to the result: training draws no torch random numbers
        print(f"after {step} steps: greedy acc, eos rate {accuracy(model, tokenizer, test[:200], False, max_new_tokens=max_new_tokens)}", flush=True)

    sft(model, tokenizer, examples, args.steps, args.batch_size, args.lr, args.seed, every=args.eval_every, callback=report)
    t_train = time.time() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.padding_side = "right"
    tokenizer.backend_tokenizer.no_padding()  # a --eval-every report pads batches; the shipped file must not
    tokenizer.save_pretrained(args.out)
    model.save_pretrained(args.out)  # float32 safetensors
    # measure what ships: reload through the Auto classes, as the trainer and vLLM will
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    model = AutoModelForCausalLM.from_pretrained(args.out).eval()
    greedy, greedy_eos = accuracy(model, tokenizer, test, do_sample=False, max_new_tokens=max_new_tokens)
    sampled, sampled_eos = accuracy(model, tokenizer, test, do_sample=True, seed=args.seed, max_new_tokens=max_new_tokens)
    unused = ("out", "eval_every", "slip_prob", "left_to_right_prob") if chain else ("out", "eval_every", *CHAIN_ONLY_ARGS)
    card = {  # deterministic content only, so that a re-run reproduces every file
        "made_by": "tools/make_tiny_base.py",
        "args": {k: v for k, v in vars(args).items() if k not in unused},
        "dtype": "float32",
        "prompt_format": (
            "Q: 3*(4+2)-5=\\n  ->  4+2=6\\n3*6=18\\n18-5=13\\nA: 13<|endoftext|> (plain text, no chat template)" if chain
            else "Q: 3+4*2-5=\\n  ->  4*2=8\\n3+8=11\\n11-5=6\\nA: 6<|endoftext|> (plain text, no chat template)"),
        "held_out": {"split": "test", "seed": args.seed, "problems": len(test)},
        "greedy_acc": greedy, "greedy_eos_rate": greedy_eos,
        "sampled_t1_acc": sampled, "sampled_t1_eos_rate": sampled_eos,
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(json.dumps({**card, "size_bytes": size, "make_seconds": round(t_train, 1)}))

if __name__ == "__main__":
    main()
