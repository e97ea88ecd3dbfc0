"""Tiny random HF checkpoints (Llama / Qwen2 / Qwen3) built offline from configs and saved as safetensors.

Every parameter is randomised -- norms around 1, biases around 0 -- so a weight mapped to the wrong place
(q<->k, gate<->up, a norm into the wrong slot) changes the outputs well above the parity tolerance.
"""

from __future__ import annotations

import torch

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)


def hf_config(family: str, *, vocab: int = 320, tied: bool = False, rope_scaling: dict | None = None, **kw):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    args = dict(COMMON, vocab_size=vocab, tie_word_embeddings=tied, **kw)
    if family == "qwen3":
        args.setdefault("head_dim", 32)  # != hidden / heads, as in real Qwen3
    rope = {"rope_type": "default", "rope_theta": 20000.0}
    if rope_scaling:
        rope = {**rope, **rope_scaling}
    args["rope_parameters"] = rope
    return cls(**args)


def make_tiny(out_dir: str, family: str, *, seed: int = 0, dtype=torch.float32, **kw) -> str:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = hf_config(family, **kw)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(0.08 * noise)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def hf_logprobs(hf_dir: str, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(input_ids[:, 1:]) under HF transformers (fp32, eager attention): the independent reference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(input_ids).logits.float() / temperature
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
