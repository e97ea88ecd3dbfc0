"""Benchmark: the chunked vocab-parallel log-prob/entropy kernel against the naive full-logits path, and
Megatron's forward log-prob pass against HF transformers on the same tiny model.

Part 1 (kernel): hidden states [T, H] and an output layer [V, H] with a realistic vocabulary (151,936),
T >= 8192 tokens and a small hidden size. Each variant runs in a fresh subprocess; its *extra* peak memory
is the process's peak RSS (ru_maxrss) during the call minus its RSS before it (inputs excluded). Naive =
fp32 logits [T, V] + log_softmax (+ entropy from softmax): what the kernel replaces. Goal: chunked extra
peak <= 10% of naive.

Part 2 (model): a tiny Qwen2 HF checkpoint; log-probs of every token of a [B, L] batch via HF transformers
(sdpa, log_softmax of the full logits) and via Megatron (`sequence_logprobs`, one process), best of N,
forward and forward+backward; Megatron's local spec with megatron-core's DotProductAttention (before), with
`models/core_attention.py` but megatron-core's own functions in place of `parallel/cpu_compat.py`'s speed
patches (unpatched), and as it runs by default (after).

All figures are ratios measured side by side in this run; absolute numbers on shared machines are not
comparable across runs.

    python tools/bench/bench_logprobs.py [--tokens 8192] [--vocab 151936] [--hidden 64] [--chunks 1024,256]
                                         [--train-tokens 2048] [--skip-model] [--skip-kernel] [--batch 8,16]
                                         [--threads 1 --clock cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _kernel_worker(variant: str, tokens: int, vocab: int, hidden: int, chunk: int, train: bool) -> dict:
    from spro_mcore.models.logprob_kernel import reference_logprobs, vocab_parallel_logprobs

    torch.manual_seed(0)
    h = (torch.randn(tokens, hidden) * 0.5).requires_grad_(train)
    w = (torch.randn(vocab, hidden) * 0.1).requires_grad_(train)
    targets = torch.randint(0, vocab, (tokens,))
    if variant == "naive" and train:
        fn = lambda: reference_logprobs(h, w, targets, vocab_size=vocab)  # noqa: E731
    elif variant == "naive":  # log-prob only: fp32 logits, log_softmax, gather
        fn = lambda: (torch.log_softmax(h @ w.t(), -1).gather(-1, targets[:, None]), None)  # noqa: E731
    else:
        fn = lambda: vocab_parallel_logprobs(h, w, targets, vocab_size=vocab, chunk_tokens=chunk,  # noqa: E731
                                             with_entropy=train)
    base = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if train:
        lp, ent = fn()
        (lp.sum() + ent.sum()).backward()
    else:
        with torch.no_grad():
            lp, _ = fn()
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"extra_peak": max(peak, peak_before) - base, "seconds": elapsed, "checksum": float(lp.sum())}


def _model_worker(hf_dir: str, batch: int, length: int, repeats: int, train: bool, threads: int = 0,
                  clock: str = "wall") -> dict:
    """Tokens/s of HF (sdpa) and of Megatron with megatron-core's DotProductAttention ("before"), with
    models/core_attention.py without the CPU speed patches ("unpatched") and as by default ("after"),
    interleaved, best of N (and the median); forward (no grad) or forward+backward.
    `clock="cpu"`: process CPU time (with threads=1, robust to other jobs on shared cores)."""
    if threads:
        torch.set_num_threads(threads)
    now = time.process_time if clock == "cpu" else time.perf_counter
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from transformers import AutoModelForCausalLM

    import spro_mcore.models.build as build
    from spro_mcore.models import load_model, make_forward_step, sequence_logprobs
    from spro_mcore.parallel import initialize_model_parallel
    from spro_mcore.parallel.cpu_compat import without_speed_patches

    ids = torch.randint(0, 500, (batch, length), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
    hf.train(train)
    initialize_model_parallel(1, 1)
    after, _ = load_model(hf_dir)
    build.local_core_attention = lambda: DotProductAttention  # megatron-core's own: the "before"
    before, _ = load_model(hf_dir)
    for c in (*after, *before):  # the same mode as HF's
        c.train(train)
    ones, resp = torch.ones(batch, dtype=torch.long), torch.full((batch,), length - 1)

    def run_hf():
        with torch.set_grad_enabled(train):
            logits = hf(ids).logits.float()
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        if train:
            lp.sum().backward()
        return lp.detach()

    def run_mcore(chunks):
        if not train:
            return sequence_logprobs(chunks, ids, ones, resp)[0]
        got = []

        def loss_fn(mb, lp, ent):
            got.append(lp.detach())
            return lp.sum(), {}

        get_forward_backward_func()(
            forward_step_func=make_forward_step(loss_fn), data_iterator=iter([dict(
                input_ids=ids, prompt_lens=ones, response_lens=resp)]),
            model=chunks, num_microbatches=1, seq_length=length, micro_batch_size=batch, forward_only=False)
        return got[0]

    def run_unpatched():
        with without_speed_patches():
            return run_mcore(after)

    runs = (("hf", run_hf), ("before", lambda: run_mcore(before)), ("unpatched", run_unpatched),
            ("after", lambda: run_mcore(after)))
    ref = run_hf()
    diff = {n: (ref - fn()).abs().max().item() for n, fn in runs[1:]}
    times = {name: [] for name, _ in runs}
    for _ in range(repeats):  # interleaved, best of N
        for name, fn in runs:
            for m in (hf, *before, *after):
                m.zero_grad(set_to_none=True)
            t0 = now()
            fn()
            times[name].append(now() - t0)
    tok = batch * (length - 1)
    # per repeat, Megatron's time over HF's in the same round: the median ratio is robust to load drifts
    ratios = {n: sorted(h / t for h, t in zip(times["hf"], times[n])) for n in times}
    return {**{f"{n}_tok_s": tok / min(t) for n, t in times.items()}, **{f"{n}_diff": d for n, d in diff.items()},
            **{f"{n}_median_ratio": r[len(r) // 2] for n, r in ratios.items()},
            **{f"{n}_median_ci": median_interval(r) for n, r in ratios.items()}}


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of `values` (order statistics k and n+1-k, the widest
    pair whose binomial(n, 1/2) coverage is still >= `level`; the extremes when n is too small)."""
    from math import comb

    v, n = sorted(values), len(values)
    k = 1
    while k + 1 <= n // 2 and 1 - 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n >= level:
        k += 1
    return v[k - 1], v[n - k]


def _spawn(kind: str, **kwargs) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_logprobs as b; print('RESULT', json.dumps(b._{kind}_worker(**json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind} worker {kwargs} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _gib(n: float) -> str:
    return f"{n / 2**30:7.2f} GiB"


def bench_kernel(tokens: int, vocab: int, hidden: int, chunks: list[int], train: bool) -> None:
    mode = "forward+backward, log-prob + entropy" if train else "forward, log-prob"
    print(f"\n[kernel] {mode}: T={tokens} tokens, V={vocab}, H={hidden} (fp32)")
    naive = _spawn("kernel", variant="naive", tokens=tokens, vocab=vocab, hidden=hidden, chunk=0, train=train)
    print(f"  naive full logits   extra peak {_gib(naive['extra_peak'])}   {tokens / naive['seconds']:9.0f} tok/s")
    for c in chunks:
        r = _spawn("kernel", variant="chunked", tokens=tokens, vocab=vocab, hidden=hidden, chunk=c, train=train)
        print(f"  chunked ({c:5d} tok) extra peak {_gib(r['extra_peak'])}   {tokens / r['seconds']:9.0f} tok/s   "
              f"memory ratio {r['extra_peak'] / naive['extra_peak']:6.3f}   speed ratio "
              f"{naive['seconds'] / r['seconds']:5.2f}x   |checksum diff| {abs(r['checksum'] - naive['checksum']):.2e}")


def bench_model(batch: int, length: int, repeats: int, threads: int = 0, clock: str = "wall") -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from tests.models.tiny_hf import make_tiny

    print(f"\n[model] tiny Qwen2 (4 layers, hidden 256, vocab 512), B={batch} x L={length}, fp32, 1 process; "
          f"Megatron local spec with megatron-core's DotProductAttention (before), SDPACoreAttention without "
          f"and with cpu_compat's speed patches (unpatched, after); "
          f"threads={threads or torch.get_num_threads()}, {clock} clock")
    with tempfile.TemporaryDirectory() as d:
        make_tiny(d, "qwen2", vocab=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2)
        for train in (False, True):
            r = _spawn("model", hf_dir=d, batch=batch, length=length, repeats=repeats, train=train, threads=threads,
                       clock=clock)
            print(f"  {'forward+backward' if train else 'forward (no grad)'}: HF transformers (sdpa) "
                  f"{r['hf_tok_s']:8.0f} tok/s")
            for n in ("before", "unpatched", "after"):
                print(f"    Megatron {n:9s} {r[f'{n}_tok_s']:8.0f} tok/s   ratio megatron/HF best-of "
                      f"{r[f'{n}_tok_s'] / r['hf_tok_s']:5.2f}, median per round {r[f'{n}_median_ratio']:5.2f} "
                      f"[{r[f'{n}_median_ci'][0]:4.2f}, {r[f'{n}_median_ci'][1]:4.2f}]   "
                      f"max |log-prob diff| {r[f'{n}_diff']:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--chunks", default="1024,256")
    p.add_argument("--train-tokens", type=int, default=2048, help="tokens for the forward+backward case (0: skip)")
    p.add_argument("--batch", default="8,16", help="rows of the model part, comma-separated: one run each "
                   "(16 x 256: the trainer's default micro-batch of 4096 tokens)")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=9)  # this VM: +-5-10% between rounds
    p.add_argument("--skip-model", action="store_true")
    p.add_argument("--skip-kernel", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the model part (0: torch's default)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="model part: wall or process CPU time")
    a = p.parse_args()
    chunks = [int(c) for c in a.chunks.split(",")]
    if not a.skip_kernel:
        bench_kernel(a.tokens, a.vocab, a.hidden, chunks, train=False)
        if a.train_tokens:
            bench_kernel(a.train_tokens, a.vocab, a.hidden, chunks, train=True)
    if not a.skip_model:
        for batch in (int(b) for b in a.batch.split(",")):
            bench_model(batch, a.length, a.repeats, a.threads, a.clock)


if __name__ == "__main__":
    main()
