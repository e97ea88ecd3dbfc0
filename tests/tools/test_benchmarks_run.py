"""The CPU benchmarks in tools/bench/ still run end to end and print their figures, at toy sizes (a broken
benchmark is found here, not by the next person who needs its numbers). Nothing about speed is asserted; what
is checked is what each bench verifies on the way: Megatron's log-probs equal HF's, the chunked kernel's
checksum the full logits', the packed batch wastes fewer tokens than the padded one. bench_gpu.py needs CUDA
(tools/gpu_check.sh runs it); bench_async.py runs whole trainer jobs (minutes) and is left out."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.e2e_helpers import subprocess_env

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"


def _run(script: str, *args: str, timeout: float = 300) -> str:
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout,
                       env=subprocess_env(), cwd=BENCH.parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_bench_advantages():
    out = _run("bench_advantages.py", "--sizes", "4x16", "--repeats", "1")
    assert re.search(r"^\s+4x16\s", out, re.M)


def test_bench_logprobs_model_and_kernel():
    out = _run("bench_logprobs.py", "--tokens", "256", "--vocab", "1024", "--hidden", "16", "--chunks", "64",
               "--train-tokens", "0", "--batch", "2", "--length", "16", "--repeats", "1")
    checksum = re.search(r"\|checksum diff\| (\S+)", out)
    assert checksum and float(checksum.group(1)) < 1e-2, out
    after = re.findall(r"Megatron after .* max \|log-prob diff\| (\S+)", out)
    assert len(after) == 2 and all(float(d) <= 1e-5 for d in after), out  # forward and forward+backward


def test_bench_step():
    out = _run("bench_step.py", "--prompts", "2", "--n", "2", "--max-new-tokens", "8", "--repeats", "1",
               "--skewed-batch", "8", "--max-response", "20", "--budget", "128")
    assert re.search(r"SPRO step / GRPO step \(identical rollouts\)\s+\d", out), out
    fractions = re.findall(r"padded fraction (\S+)", out)
    assert len(fractions) == 2 and float(fractions[1]) < float(fractions[0]), out  # packed wastes less


def test_bench_weight_sync():
    out = _run("bench_weight_sync.py", "--hidden", "64", "--layers", "2", "--vocab", "512", "--repeats", "1",
               "--megatron", "--no-vllm")
    assert "megatron -> hf" in out, out


def test_median_interval_is_the_order_statistics_pair_with_95_percent_coverage():
    from math import comb

    sys.path.insert(0, str(BENCH))
    from bench_logprobs import median_interval

    for n in (3, 9, 15, 21):
        lo, hi = median_interval(list(range(1, n + 1)))  # the values are their own ranks
        coverage = lambda k: sum(comb(n, i) for i in range(k, n - k + 1)) / 2 ** n  # noqa: E731  P(k <= B <= n-k)
        if n >= 9:
            assert coverage(lo) >= 0.95 > coverage(lo + 1) and hi == n + 1 - lo
        else:
            assert (lo, hi) == (1, n)  # too few rounds for a 95% interval: the extremes
