#!/usr/bin/env bash
# The GPU path, checked for real on one CUDA GPU (<= 8 minutes): torch's CUDA build and megatron-core only
# (Transformer Engine and vLLM are not needed). Prints PASS/FAIL per check and a benchmark table.
#
#   bash tools/gpu_check.sh [OUT_DIR]        # OUT_DIR default: outputs/gpu_check
#
# Checks:
#   env      CUDA visible, megatron-core imports, NCCL available
#   train    3 real SPRO steps of the shipped tiny base in bf16 through the CLI under torchrun (NCCL, world
#            size 1), hf engine on the GPU, checkpoint every step; every metric finite
#   resume   the same command with trainer.total_steps=5 resumes from step 3's checkpoint and finishes
#   export   the final policy was exported as an HF directory that transformers loads on the GPU
#   bench    tools/bench/bench_gpu.py: log-prob kernel vs full logits at T=8192, V=151,936, and the update's
#            throughput and MFU on a 0.5B-shaped model (skip with SPRO_GPU_BENCH=0)
# Python packages missing on the machine (megatron-core, omegaconf, math-verify, ...) can come as wheels:
# SPRO_WHEELS=<folder> installs every *.whl there into a private target first.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/outputs/gpu_check}"
py="${PYTHON:-python3}"
cd "$root"
mkdir -p "$out"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -n "${SPRO_WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/spro_site \
    "$SPRO_WHEELS"/*.whl || { echo "FAIL wheels: could not install $SPRO_WHEELS/*.whl"; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/spro_site"
fi

results=()
check() {  # check NAME TIMEOUT_S COMMAND...: run, log to $out/NAME.log, record PASS/FAIL
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local verdict=PASS
  [ $rc -eq 0 ] || verdict="FAIL (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"
  results+=("$(printf '%-7s %-28s %4ss' "$name" "$verdict" $((SECONDS - t0)))")
  echo "[gpu_check] $name: $verdict ($((SECONDS - t0)) s; log $out/$name.log)"
  [ $rc -eq 0 ] || tail -n 25 "$out/$name.log"
  return $rc
}

check env 120 "$py" - <<'EOF'
import torch, torch.distributed as dist
assert torch.cuda.is_available(), "no CUDA device visible"
assert dist.is_nccl_available(), "torch has no NCCL"
import megatron.core, transformers, omegaconf
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), "megatron-core", megatron.core.__version__,
      "transformers", transformers.__version__)
EOF

run="$out/run"
rm -rf "$run"
train=("$py" -m torch.distributed.run --nnodes=1 --nproc-per-node=1 --master-addr=127.0.0.1 --master-port=29517
       -m spro_mcore.cli train --config configs/quickstart_cpu.yaml model.dtype=bfloat16 rollout.dtype=bfloat16
       trainer.output_dir="$run" trainer.eval_interval=0 checkpoint.interval=1 logging.progress_bar=false
       data.prompts_per_step=16)

# steps 1..N in metrics.jsonl, every value finite, the pinned keys present
cat >"$out/metrics_ok.py" <<'EOF'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r["step"] for r in rows]
assert steps == list(range(1, int(sys.argv[2]) + 1)), f"steps {steps}"
for r in rows:
    bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
    assert not bad, f"step {r['step']}: non-finite {bad}"
    for k in ("reward/mean", "train/grad_norm", "adv/msa_abs_mean", "rollout/engine_logprob_abs_diff_mean",
              "time/step", "time/generate", "time/logprob", "time/update", "time/weight_sync"):
        assert k in r, f"step {r['step']}: {k} missing"
last = rows[-1]
print("steps", steps, "reward", [round(r["reward/mean"], 3) for r in rows], "engine-vs-trainer |dlogp|",
      round(last["rollout/engine_logprob_abs_diff_mean"], 4), "step time", round(last["time/step"], 2), "s")
EOF
ok="$(printf '%q ' "$py" "$out/metrics_ok.py" "$run/metrics.jsonl")"
cmd="$(printf '%q ' "${train[@]}")"

check train 240 bash -c "$cmd trainer.total_steps=3 && $ok 3"
check resume 180 bash -c "$cmd trainer.total_steps=5 && grep -q 'resumed from .*step_3' $(printf '%q' "$out/resume.log") && $ok 5"
check export 120 "$py" - "$run/hf_final" <<'EOF'
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).cuda()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok("Q: 3+4*2-5=\n", return_tensors="pt").input_ids.cuda()
out = m.generate(ids, max_new_tokens=24, do_sample=False)
print(repr(tok.decode(out[0, ids.shape[1]:])))
EOF

if [ "${SPRO_GPU_BENCH:-1}" != "0" ]; then
  check bench 330 "$py" tools/bench/bench_gpu.py --json "$out/bench_gpu.json"
  sed -n '/^\[gpu\]/,$p' "$out/bench.log"
fi

echo
echo "[gpu_check] summary"
printf '  %s\n' "${results[@]}"
! printf '%s\n' "${results[@]}" | grep -q FAIL
