"""Run `spro-mcore pav train` for real in a fresh process (one process or torchrun): megatron-core's checkpoint
writer starts processes of its own, which the daemonic test processes of tests/multiproc.py may not."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def pav_train_command(overrides, nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "spro_mcore.cli", "pav", "train", *overrides]
    from spro_mcore.parallel.distributed import free_port

    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
            str(free_port()), "-m", "spro_mcore.cli", "pav", "train", *overrides]


def pav_env(nproc: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1" if nproc > 1 else "2", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    return env


def pav_train(overrides, nproc: int = 1, timeout: float = 400) -> subprocess.CompletedProcess:
    r = subprocess.run(pav_train_command(overrides, nproc), cwd=ROOT, env=pav_env(nproc), capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"pav train exited {r.returncode}\n--- stderr (tail) ---\n{r.stderr[-4000:]}")
    return r


def metric_rows(verifier_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(verifier_dir) / "metrics.jsonl").read_text().splitlines()]
