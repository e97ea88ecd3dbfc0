"""Run `spro-mcore train` for real in a fresh process (single process or torchrun) and read its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart_cpu.yaml"

# a few-second version of the quickstart: small groups, short responses, tiny eval split
SMALL = [
    "trainer.total_steps=2", "data.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=32",
    "data.synthetic_train_size=64", "data.synthetic_eval_size=8", "trainer.eval_interval=2", "trainer.eval_n=2",
    "logging.progress_bar=false",
]


def subprocess_env(nproc: int = 1) -> dict[str, str]:
    """This environment without the torchrun variables of an enclosing launch, one thread per rank."""
    torchrun_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in torchrun_vars}
    env["OMP_NUM_THREADS"] = "1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2")
    return env


def train(out_dir: Path, *overrides: str, nproc: int = 1, timeout: float = 420, config: Path = QUICKSTART,
          check: bool = True) -> subprocess.CompletedProcess:
    args = ["train", "--config", str(config), f"trainer.output_dir={out_dir}", *SMALL, *overrides]
    if nproc == 1:
        cmd = [sys.executable, "-m", "spro_mcore.cli", *args]
    else:
        from spro_mcore.parallel.distributed import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), "-m", "spro_mcore.cli", *args]
    env = subprocess_env(nproc)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"train exited {r.returncode}\n--- stderr (tail) ---\n{r.stderr[-4000:]}")
    return r


def metrics(out_dir: Path) -> dict[int, dict]:
    rows = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r for r in rows}
