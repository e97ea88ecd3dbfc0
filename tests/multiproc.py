"""Run a test body in N CPU processes, torchrun-style, with a hard timeout.

Each process gets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (a fresh port per call) exactly as
torchrun sets them, so the code under test initialises torch.distributed (gloo) the way it does in
production. A process that raises fails the test with its traceback; a hung collective fails it at the
timeout (all processes are killed), instead of hanging CI.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import queue
import traceback
from typing import Any, Callable

from spro_mcore.parallel.distributed import free_port


def _child(fn, rank, world_size, port, args, results):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    try:
        import torch

        torch.set_num_threads(1)
        out = fn(*args)
        # plain bytes: tensors put on the queue as is travel as shared file descriptors, which vanish
        # when this process exits before the parent has read them
        buf = io.BytesIO()
        torch.save(out, buf)
        results.put((rank, True, buf.getvalue()))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        try:
            from spro_mcore.parallel import destroy

            destroy()
        except Exception:
            pass


def run_in_processes(fn: Callable[..., Any], nprocs: int, *args, timeout: float = 180.0) -> list[Any]:
    """Call `fn(*args)` in `nprocs` spawned processes; return the per-rank return values (picklable)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, nprocs, port, args, results), daemon=True) for r in range(nprocs)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    errors: list[str] = []
    try:
        import time

        deadline = time.monotonic() + timeout
        while len(out) + len(errors) < nprocs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{nprocs}-process test did not finish within {timeout:.0f}s (hung collective?)")
            try:
                rank, ok, value = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and results.empty():
                    raise RuntimeError(f"rank process died with exit code {dead[0].exitcode} before reporting")
                continue
            if ok:
                import torch

                out[rank] = torch.load(io.BytesIO(value), weights_only=False)
            else:
                errors.append(f"rank {rank} failed:\n{value}")
                break  # the others may now hang in a collective
        if errors:
            raise AssertionError("\n".join(errors))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return [out[r] for r in range(nprocs)]
