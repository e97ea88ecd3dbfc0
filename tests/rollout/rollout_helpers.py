"""Helpers of the rollout tests: tiny Qwen2 checkpoints built offline, prompts, and the gap to the reference.

The reference for every engine's log-probs is HF transformers' full forward pass (no KV cache, no sampling
code) over prompt + generated tokens in fp32: log_softmax(logits / T) at each generated position (the
`reference` fixture in conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_QWEN2 = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  bos_token_id=0, eos_token_id=1, pad_token_id=0)


def build_tiny_qwen2(path: Path, tied: bool, seed: int) -> Path:
    """A 2-layer Qwen2 (head_dim 32, GQA 4/2, QKV bias) with a word-level tokenizer (`t0`..`t511`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=tied, **TINY_QWEN2))
    with torch.no_grad():  # spread weights enough for peaked but varied next-token distributions (~4.6 nats)
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.1 if ("embed" in name or "lm_head" in name) else 0.05)
    # hostile sampling defaults, as real checkpoints ship them (Qwen: top_k=20, repetition_penalty=1.05):
    # an engine that let them leak into its sampling would fail every parity test
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=0, do_sample=True,
                                               temperature=0.3, top_k=3, top_p=0.5, min_p=0.2,
                                               repetition_penalty=1.3)
    model.save_pretrained(path)
    vocab = {f"t{i}": i for i in range(TINY_QWEN2["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t0", eos_token="t1", pad_token="t0",
                            unk_token="t2").save_pretrained(path)
    return path


def hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def max_logprob_gap(reference, model_path, prompts, groups, temperature) -> float:
    """Largest |engine - reference| log-prob over every generated token of every sample."""
    gap = 0.0
    for prompt, group in zip(prompts, groups):
        for s in group:
            ref = reference(model_path, prompt, s.token_ids, temperature)
            gap = max(gap, (ref - torch.tensor(s.logprobs)).abs().max().item())
    return gap


def long_prompts(n: int = 3, lengths=(150, 200, 260), seed: int = 0) -> list[list[int]]:
    """Prompts longer than one 128-token KV block, so a stale prefix cache would be reused."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, TINY_QWEN2["vocab_size"], (lengths[i % len(lengths)],), generator=g).tolist()
            for i in range(n)]
