"""A tiny policy over a 4-token vocabulary (EOS, a, b, line break), small enough to enumerate every short
continuation with its probability; plus its prompt file and a reward function that depends on the prefix."""
from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = {"<|endoftext|>": 0, "a": 1, "b": 2, "Ċ": 3}  # byte-level spelling: "Ċ" is the line break


def non_a_chars(response_text: str, answer: str, **meta) -> float:
    """Reward 1 when the response holds at least `answer` characters other than 'a' ('b' or line breaks): Q then
    depends on every token of the prefix and on how many tokens a continuation may add."""
    return float(len(response_text.replace("a", "")) >= int(answer))


def make_policy(out_dir: Path, seed: int = 6, **model_kw) -> Path:
    """model_kw: hf_config overrides (vLLM's CPU attention needs head_dim >= 32: num_attention_heads=2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.models.tiny_hf import make_tiny

    make_tiny(str(out_dir), "qwen2", seed=seed, vocab=len(VOCAB), tied=False, eos_token_id=0, pad_token_id=0,
              **model_kw)
    # byte-level BPE like Qwen's (transformers rebuilds a qwen2 checkpoint's tokenizer as Qwen2Tokenizer anyway)
    tok = Tokenizer(models.BPE(vocab=VOCAB, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(out_dir)
    return out_dir


def write_prompts(path: Path) -> Path:
    rows = [{"prompt": "a\n", "answer": "3"}, {"prompt": "b\n", "answer": "3"}, {"prompt": "ab\n", "answer": "3"},
            {"prompt": "b\nb\n", "answer": "2"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    return path


@torch.no_grad()
def exact_q(model, tokenizer, context: list[int], prefix: list[int], budget: int, reward, answer: str) -> float:
    """E[reward(prefix + continuation)] over every continuation of at most `budget` tokens, ending at <eos>,
    each weighted by its probability under the model at temperature 1 (the independent reference)."""
    total, frontier = 0.0, [([], 1.0)]
    for _ in range(budget):
        if not frontier:
            break
        batch = torch.tensor([context + prefix + c for c, _ in frontier])
        probs = torch.softmax(model(batch).logits[:, -1].double(), -1)
        nxt = []
        for (c, p), row in zip(frontier, probs):
            for t in range(len(VOCAB)):
                if t == 0:
                    total += p * row[t].item() * reward(tokenizer.decode(prefix + c, skip_special_tokens=True), answer)
                else:
                    nxt.append((c + [t], p * row[t].item()))
        frontier = nxt
    total += sum(p * reward(tokenizer.decode(prefix + c, skip_special_tokens=True), answer) for c, p in frontier)
    return total
