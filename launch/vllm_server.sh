#!/usr/bin/env bash
# Start vLLM OpenAI-compatible server(s) for spro-mcore's server mode (rollout.engine=vllm rollout.mode=server).
#
#   launch/vllm_server.sh MODEL_PATH [PORT=8000] [HOST=127.0.0.1] [NUM_SERVERS=1] [-- extra vllm args]
#
# One server: runs in the foreground on HOST:PORT. NUM_SERVERS>1 (one node, several engines): server k
# listens on PORT+k and gets GPUs [k*TP, (k+1)*TP) through CUDA_VISIBLE_DEVICES; the script waits on all
# and stops them together. Use HOST=0.0.0.0 to serve trainers on other nodes (run once per node).
# Point the trainer at them with rollout.server_urls=[http://HOST:PORT,...].
#
# Environment: SPRO_VLLM_DTYPE (auto), SPRO_VLLM_TP (1), SPRO_VLLM_MAX_MODEL_LEN (4096),
# SPRO_VLLM_KV_CACHE_BYTES (CPU default 256 MiB; required there), SPRO_VLLM_GPU_MEM (0.85, CUDA), PYTHON.
set -euo pipefail
model="${1:?usage: launch/vllm_server.sh MODEL_PATH [PORT] [HOST] [NUM_SERVERS] [-- vllm args]}"
shift
port=8000; host=127.0.0.1; num=1
[ $# -gt 0 ] && [ "$1" != "--" ] && { port="$1"; shift; }
[ $# -gt 0 ] && [ "$1" != "--" ] && { host="$1"; shift; }
[ $# -gt 0 ] && [ "$1" != "--" ] && { num="$1"; shift; }
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
py="${PYTHON:-python}"
tp="${SPRO_VLLM_TP:-1}"

# The weight-update endpoints (/pause, /collective_rpc, /reset_prefix_cache, /resume) exist only in dev mode.
export VLLM_SERVER_DEV_MODE=1
# No torch.compile on the first request that asks for log-probs (4-22 s on CPU).
export TORCHDYNAMO_DISABLE="${TORCHDYNAMO_DISABLE:-1}"

memory_args=()
if [ -n "${SPRO_VLLM_KV_CACHE_BYTES:-}" ]; then
  memory_args=(--kv-cache-memory-bytes "$SPRO_VLLM_KV_CACHE_BYTES")
elif "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  memory_args=(--gpu-memory-utilization "${SPRO_VLLM_GPU_MEM:-0.85}")
else
  # on CPU the default memory fraction is read against one NUMA node and start-up fails
  memory_args=(--kv-cache-memory-bytes $((256 * 1024 * 1024)))
fi

serve() {  # serve PORT: one server in the foreground
  exec "$py" -m vllm.entrypoints.openai.api_server --model "$model" --host "$host" --port "$1" \
    --served-model-name policy --dtype "${SPRO_VLLM_DTYPE:-auto}" --enforce-eager \
    --tensor-parallel-size "$tp" --max-model-len "${SPRO_VLLM_MAX_MODEL_LEN:-4096}" \
    --logprobs-mode processed_logprobs --generation-config vllm \
    --worker-extension-cls spro_mcore.rollout.vllm_worker_extension.SproWorkerExtension \
    "${memory_args[@]}" "$@"
}

if [ "$num" -eq 1 ]; then
  serve "$port" "$@"
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
for ((k = 0; k < num; k++)); do
  gpus=$(seq -s, $((k * tp)) $(((k + 1) * tp - 1)))
  (export CUDA_VISIBLE_DEVICES="$gpus"; serve $((port + k)) "$@") &
  pids+=($!)
  echo "[vllm_server] server $k: http://$host:$((port + k)) (GPUs $gpus)"
done
wait -n "${pids[@]}"  # one server exiting stops the node's set
