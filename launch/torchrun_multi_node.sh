#!/usr/bin/env bash
# Train on NNODES nodes: run this once on every node with the same MASTER_ADDR/MASTER_PORT and the node's
# own NODE_RANK (0 on the node at MASTER_ADDR). Static rendezvous: all nodes must start within
# parallel.timeout_minutes of each other.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 NPROC=8 \
#     launch/torchrun_multi_node.sh --config configs/my_recipe.yaml trainer.output_dir=/shared/run
#
# trainer.output_dir (checkpoints) must be on a filesystem every node sees: dist checkpoints are written by
# all ranks into one directory. NPROC defaults to the number of visible GPUs (1 without CUDA).
set -euo pipefail
: "${NNODES:?set NNODES (number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR (host name or IP of node 0)}"
: "${MASTER_PORT:?set MASTER_PORT (a free TCP port on node 0)}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python}"
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$py" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cd "$root"
# on SIGTERM torchrun forwards it to the trainers and waits this long for their checkpoint before SIGKILL
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}"
exec "$py" -m torch.distributed.run --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC" \
  --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" -m spro_mcore.cli train "$@"
