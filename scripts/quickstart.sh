#!/usr/bin/env bash
# The main job: a short SPRO training on CPU with the shipped tiny model. Extra arguments are config
# overrides, e.g. `bash scripts/quickstart.sh trainer.total_steps=5`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh" core
cd "$root"
exec spro-mcore train --config configs/quickstart_cpu.yaml "$@"
