"""GPU benchmark of the Megatron passes on one CUDA device (megatron-core local spec; no Transformer Engine,
no vLLM): a Qwen2.5-0.5B-shaped model (24 layers, hidden 896, vocab 151,936) with random weights in bf16.

1. Log-prob pass at T tokens (one sequence, T >= 8192): the chunked vocab-parallel kernel (what the trainer
   runs) against full logits + log_softmax (what it replaces): tokens/s and peak memory above the weights.
2. The update (`MegatronPolicy.update`: forward + backward + distributed optimizer step) on a length-skewed
   batch of responses (many short, a long tail), padded and packed (`trainer.packing`, token-balanced
   micro-batches): tokens/s of real tokens, the padded-token fraction, peak memory, and model FLOPs
   utilisation against the GPU's dense bf16 peak (`--peak-tflops`, 989 for an H100 SXM).

Ratios are measured side by side in this run. Run by tools/gpu_check.sh; by hand:

    python tools/bench/bench_gpu.py [--tokens 8192] [--chunks 4096,1024] [--batch 32] [--layers 24]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

QWEN05 = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896, intermediate_size=4864,
              num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
              max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
              hidden_act="silu", torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645)


def _timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (allocator, kernels)
    torch.cuda.synchronize()
    best = math.inf
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _peak_above(fn) -> tuple[int, object]:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, out


def make_model_dir(path: str, layers: int) -> str:
    """An HF directory with random bf16 weights of the 0.5B shape (what `load_model` and the policy read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{**QWEN05, "num_hidden_layers": layers})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


def bench_logprobs(chunks, hf_dir: str, tokens: int, chunk_sizes: list[int], repeats: int) -> dict:
    from spro_mcore.models.logprobs import sequence_logprobs

    prompt = 192
    ids = torch.randint(0, QWEN05["vocab_size"], (1, tokens), generator=torch.Generator().manual_seed(0))
    p_lens, r_lens = torch.tensor([prompt]), torch.tensor([tokens - prompt])
    model = chunks[0]
    rows = {}

    def full_logits():
        with torch.no_grad():
            dev_ids = ids.cuda()
            pos = torch.arange(tokens, device="cuda")[None]
            logits = model(dev_ids, pos, None)  # [1, T, V] (bf16)
            lp = torch.log_softmax(logits[:, prompt - 1:-1].float(), -1)
            return lp.gather(-1, dev_ids[:, prompt:, None]).squeeze(-1)

    mem, ref = _peak_above(full_logits)
    secs, _ = _timed(full_logits, repeats)
    rows["full_logits"] = {"tok_s": tokens / secs, "peak_gib": mem / 2**30}
    for c in chunk_sizes:
        run = lambda c=c: sequence_logprobs(chunks, ids, p_lens, r_lens, chunk_tokens=c)[0]  # noqa: E731
        mem, lp = _peak_above(run)
        secs, _ = _timed(run, repeats)
        rows[f"chunked_{c}"] = {"tok_s": tokens / secs, "peak_gib": mem / 2**30,
                                "max_abs_diff_vs_full": float((lp.cuda() - ref).abs().max())}
    return rows


def _skewed_lengths(n: int, longest: int, seed: int = 0) -> list[int]:
    """Response lengths like RL rollouts: log-normal, most short, a long tail, capped at `longest`."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.exp(torch.randn(n, generator=g) * 0.9 + math.log(longest / 6)).clamp(8, longest).long()
    lens[0] = longest  # one response reaches the limit, as in a real batch
    return lens.tolist()


def bench_update(hf_dir: str, batch: int, longest: int, repeats: int, peak_tflops: float, layers: int,
                 packing: bool) -> dict:
    from spro_mcore.config.schema import Config
    from spro_mcore.parallel.distributed import layout
    from spro_mcore.rollout.engine import Sample
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy
    from spro_mcore.trainer.rollout_batch import build_rollout_batch

    cfg = Config()
    cfg.model.dtype, cfg.model.transformer_impl, cfg.model.logprob_chunk_tokens = "bfloat16", "local", 4096
    cfg.trainer.micro_batch_tokens, cfg.trainer.packing = 8192, packing
    cfg.optim.lr = 1e-6
    policy = MegatronPolicy(cfg, layout(), hf_dir, hf_dir, total_updates=repeats + 2)
    prompt = 128
    lens = _skewed_lengths(batch, longest)
    g = torch.Generator().manual_seed(1)
    groups = [[Sample(torch.randint(0, 150000, (n,), generator=g).tolist(), [-1.0] * n, "stop")] for n in lens]
    prompts = [torch.randint(0, 150000, (prompt,), generator=g).tolist() for _ in lens]
    b = build_rollout_batch(prompts, groups, [[float(i % 2)] for i in range(batch)], pad_id=0)
    old, _ = policy.logprobs(b)
    adv = torch.randn(b.response_mask.shape) * b.response_mask
    run = lambda: policy.update(b, adv, old, old)  # noqa: E731
    mem, _ = _peak_above(run)
    secs, metrics = _timed(run, repeats)

    real = sum(lens) + prompt * batch
    if packing:  # every pack is padded to the longest pack of its mini-batch
        from spro_mcore.models.packing import pack_len_for

        packs = policy.packs(b, torch.arange(batch))
        padded = len(packs) * pack_len_for(b.total_lens, packs)
    else:
        padded = batch * b.input_ids.shape[1]
    h, v = QWEN05["hidden_size"], QWEN05["vocab_size"]
    per_layer = (2 * h * h + 2 * h * (h // QWEN05["num_attention_heads"]) * QWEN05["num_key_value_heads"]
                 + 3 * h * QWEN05["intermediate_size"])
    # fwd+bwd = 3x forward; 2 FLOPs per multiply-add; causal attention QK^T and AV; logits on response tokens
    dense = 6 * layers * per_layer * real
    attn = 3 * 2 * 2 * layers * h * sum((prompt + n) ** 2 / 2 for n in lens)
    logits = 6 * h * v * sum(lens)
    flops = dense + attn + logits
    return {"tok_s_real": real / secs, "seconds": secs, "padded_fraction": 1 - real / padded,
            "peak_gib": mem / 2**30, "mfu": flops / secs / (peak_tflops * 1e12), "batch": batch,
            "longest": longest, "mean_len": sum(lens) / batch, "lr": metrics.get("train/lr")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--chunks", default="4096,1024")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--longest", type=int, default=4096)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--json", default="", help="also write the figures to this file")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device")

    from spro_mcore.models import load_model
    from spro_mcore.config.schema import ModelConfig
    from spro_mcore.parallel import initialize_model_parallel, seed_everything

    initialize_model_parallel(1, 1)
    seed_everything(0)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as d:
        hf_dir = make_model_dir(d, a.layers)
        chunks, _ = load_model(hf_dir, ModelConfig(dtype="bfloat16", transformer_impl="local"))
        for c in chunks:
            c.eval()
        weights = torch.cuda.memory_allocated()
        out["weights_gib"] = weights / 2**30
        out["logprobs"] = bench_logprobs(chunks, hf_dir, a.tokens, [int(c) for c in a.chunks.split(",")], a.repeats)
        del chunks
        torch.cuda.empty_cache()
        for packing in (False, True):
            out["update_packed" if packing else "update"] = bench_update(
                hf_dir, a.batch, a.longest, a.repeats, a.peak_tflops, a.layers, packing)
            torch.cuda.empty_cache()

    print(f"\n[gpu] {out['device']}, torch {out['torch']}, Qwen2.5-0.5B shape ({a.layers} layers), bf16, "
          f"megatron-core local spec; weights {out['weights_gib']:.2f} GiB")
    print(f"  log-prob pass, T={a.tokens}, V={QWEN05['vocab_size']}:")
    full = out["logprobs"]["full_logits"]
    for name, r in out["logprobs"].items():
        extra = "" if name == "full_logits" else (
            f"   memory ratio {r['peak_gib'] / full['peak_gib']:.3f}   speed ratio {r['tok_s'] / full['tok_s']:.2f}x"
            f"   max |diff| {r['max_abs_diff_vs_full']:.1e}")
        print(f"    {name:16s} {r['tok_s']:10.0f} tok/s   peak above weights {r['peak_gib']:6.2f} GiB{extra}")
    u = out["update"]
    print(f"  update (fwd+bwd+optimizer), {u['batch']} responses, mean {u['mean_len']:.0f} / max {u['longest']} "
          f"tokens, micro-batches of 8192 tokens:")
    for name in ("update", "update_packed"):
        u = out[name]
        extra = "" if name == "update" else f"   {u['tok_s_real'] / out['update']['tok_s_real']:.2f}x padded"
        print(f"    {'packed' if name.endswith('packed') else 'padded':7s} {u['tok_s_real']:8.0f} real tok/s, "
              f"padded-token fraction {u['padded_fraction']:.2f}, peak {u['peak_gib']:.2f} GiB, "
              f"MFU {100 * u['mfu']:.1f}% of {a.peak_tflops:.0f} TFLOP/s{extra}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
