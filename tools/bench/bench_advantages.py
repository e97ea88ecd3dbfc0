"""Benchmark: SPRO / GRPO advantages against one plain torch.cumsum over the same [B, T] tensor.

Every size is timed side by side in one run (interleaved repeats, best of N), and reported as a ratio to
the cumsum baseline measured in that same run; absolute times on shared machines are not comparable.
The goal: spro_advantages within 3x one cumsum.

What sets the ratio on CPU: the cumsum itself (a serial scan per row), plus about six more passes over
[B, T] that torch ops cannot fuse (the log-prob difference, two NaN-safe masks, the group scatter, the fused
sparse gather-subtract with its beta scaling). Where [B, T] exceeds glibc's 32 MiB mmap threshold, every
fresh buffer pays page faults, the baseline's output included; spro allocates only its output, so its
ratio falls at large sizes.

    python tools/bench/bench_advantages.py [--sizes 1024x1024,4096x4096] [--group-size 8] [--repeats 7] [--threads 1 [--clock cpu]]
"""
from __future__ import annotations

import argparse
import time

import torch

from spro_mcore.algo.advantages import grpo_outcome_advantages, outcome_on_tokens, spro_advantages

DEFAULT_SIZES = "256x256,1024x1024,4096x1024,1024x4096,4096x4096"


def make_batch(batch: int, width: int, group_size: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    old = (-torch.rand(batch, width, generator=g, dtype=dtype) * 3).to(device)
    ref = (old.cpu() + 0.1 * torch.randn(batch, width, generator=g, dtype=dtype)).to(device)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(device)
    rewards = torch.randint(0, 2, (batch,), generator=g).to(dtype).to(device)
    # shuffled ids: groups interleaved through the batch, as after filtering or packing
    group_ids = (torch.randperm(batch, generator=g) // group_size).to(device)
    return old, ref, mask, rewards, group_ids


def best_time(fns: dict, repeats: int, device: str, clock=time.perf_counter) -> dict:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    best = {name: float("inf") for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved so drift in machine load hits all alike
            sync()
            start = clock()
            fn()
            sync()
            best[name] = min(best[name], clock() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated BxT")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0 = torch's default); on a CPU shared with other jobs, "
                             "1 avoids thread-barrier stalls that swamp every small op")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu = CPU time of this thread (with --threads 1 it ignores time the OS gives to "
                             "other jobs, for ratios on a busy machine; CPU device only)")
    args = parser.parse_args()
    if args.clock == "cpu" and (args.threads != 1 or args.device != "cpu"):
        parser.error("--clock cpu needs --threads 1 and --device cpu (other threads' work would not be counted)")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"group_size={args.group_size} repeats={args.repeats} clock={args.clock} (best of N, ratio = time / cumsum time)")
    header = f"{'B x T':>12} {'cumsum ms':>10} {'spro':>7} {'spro loo':>9} {'grpo [B,T]':>11} {'grpo [B]':>9}"
    print(header)
    for size in args.sizes.split(","):
        batch, width = (int(v) for v in size.lower().split("x"))
        old, ref, mask, rewards, gids = make_batch(batch, width, args.group_size, dtype, args.device)
        fns = {
            "cumsum": lambda: torch.cumsum(old, dim=1),
            "spro": lambda: spro_advantages(old, ref, mask, rewards, gids, beta=0.1),
            "spro_loo": lambda: spro_advantages(old, ref, mask, rewards, gids, beta=0.1,
                                                baseline="leave_one_out"),
            "grpo_tokens": lambda: outcome_on_tokens(grpo_outcome_advantages(rewards, gids), mask),
            "grpo": lambda: grpo_outcome_advantages(rewards, gids),
        }
        t = best_time(fns, args.repeats, args.device, clock)
        base = t["cumsum"]
        print(f"{size:>12} {base * 1e3:>10.2f} {t['spro'] / base:>6.2f}x {t['spro_loo'] / base:>8.2f}x "
              f"{t['grpo_tokens'] / base:>10.2f}x {t['grpo'] / base:>8.3f}x", flush=True)


if __name__ == "__main__":
    main()
