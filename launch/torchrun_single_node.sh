#!/usr/bin/env bash
# Train on one node: one process per GPU (or NPROC CPU processes), torchrun sets the ranks.
#
#   NPROC=8 launch/torchrun_single_node.sh --config configs/quickstart_cpu.yaml [key=value ...]
#
# NPROC defaults to the number of visible GPUs (1 without CUDA). Everything after the script name goes to
# `spro-mcore train`. Resume is automatic (checkpoint.resume=auto): rerun the same command after a stop.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python}"
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$py" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
port="${MASTER_PORT:-$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}"
# OpenMP busy-waiting makes CPU processes that share cores very slow
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cd "$root"
# on SIGTERM torchrun forwards it to the trainers and waits this long for their checkpoint before SIGKILL
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}"
exec "$py" -m torch.distributed.run --nnodes=1 --nproc-per-node="$NPROC" \
  --master-addr=127.0.0.1 --master-port="$port" -m spro_mcore.cli train "$@"
