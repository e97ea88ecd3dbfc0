"""Fixtures of the rollout tests (helpers in rollout_helpers.py)."""

from __future__ import annotations

import pytest
import torch

from tests.rollout.rollout_helpers import build_tiny_qwen2


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{(tied, version): path} with version "a" (the engine's start) and "b" (the update), per tying."""
    root = tmp_path_factory.mktemp("tiny_qwen2")
    return {(tied, v): build_tiny_qwen2(root / f"{'tied' if tied else 'untied'}_{v}", tied, seed)
            for tied in (True, False) for v, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="session")
def reference():
    """reference(model_path, prompt, tokens, temperature) -> HF log-probs of `tokens` after `prompt`."""
    from transformers import AutoModelForCausalLM

    cache = {}

    @torch.no_grad()
    def logprobs(model_path, prompt, tokens, temperature):
        if model_path not in cache:
            cache[model_path] = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        ids = torch.tensor([list(prompt) + list(tokens)])
        logits = cache[model_path](ids).logits[0, len(prompt) - 1: -1].float() / temperature
        return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]

    return logprobs
