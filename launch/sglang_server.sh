#!/usr/bin/env bash
# Start SGLang server(s) for spro-mcore's server mode (rollout.engine=sglang rollout.mode=server). GPU only.
#
#   launch/sglang_server.sh MODEL_PATH [PORT=30000] [HOST=127.0.0.1] [NUM_SERVERS=1] [-- extra sglang args]
#
# One server: runs in the foreground on HOST:PORT. NUM_SERVERS>1 (one node, several engines): server k
# listens on PORT+k on GPUs [k*TP, (k+1)*TP); the script waits on all and stops them together. Use
# HOST=0.0.0.0 to serve trainers on other nodes (run once per node). Point the trainer at them with
# rollout.server_urls=[http://HOST:PORT,...] (or at an sglang-router in front of them).
#
# Environment: SPRO_SGLANG_TP (1), SPRO_SGLANG_DTYPE (auto), SPRO_SGLANG_MEM_FRACTION (0.8),
# SPRO_SGLANG_MEMORY_SAVER=1 (enables /release_memory_occupation for rollout.release_memory),
# SPRO_SGLANG_DETERMINISTIC=1 (honours per-request sampling_seed), PYTHON.
set -euo pipefail
model="${1:?usage: launch/sglang_server.sh MODEL_PATH [PORT] [HOST] [NUM_SERVERS] [-- sglang args]}"
shift
port=30000; host=127.0.0.1; num=1
[ $# -gt 0 ] && [ "$1" != "--" ] && { port="$1"; shift; }
[ $# -gt 0 ] && [ "$1" != "--" ] && { host="$1"; shift; }
[ $# -gt 0 ] && [ "$1" != "--" ] && { num="$1"; shift; }
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
py="${PYTHON:-python}"
tp="${SPRO_SGLANG_TP:-1}"

# The log-probs must be of the temperature-scaled distribution (what the trainer recomputes).
unset SGLANG_RETURN_ORIGINAL_LOGPROB

extra=()
[ "${SPRO_SGLANG_MEMORY_SAVER:-0}" = "1" ] && extra+=(--enable-memory-saver)
[ "${SPRO_SGLANG_DETERMINISTIC:-0}" = "1" ] && extra+=(--enable-deterministic-inference)

serve() {  # serve PORT: one server in the foreground
  # token ids in and out: the trainer tokenizes, so the server skips its tokenizer
  exec "$py" -m sglang.launch_server --model-path "$model" --host "$host" --port "$1" \
    --tp-size "$tp" --dtype "${SPRO_SGLANG_DTYPE:-auto}" --mem-fraction-static "${SPRO_SGLANG_MEM_FRACTION:-0.8}" \
    --skip-tokenizer-init "${extra[@]}" "$@"
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
  echo "[sglang_server] server $k: http://$host:$((port + k)) (GPUs $gpus)"
done
wait -n "${pids[@]}"  # one server exiting stops the node's set
