#!/usr/bin/env bash
# The test suite: every tier that can run on this machine (unit, dist, engine with the real vLLM CPU
# build, e2e; gpu tests run where CUDA is present). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh" test
cd "$root"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
set +e
python -m pytest -q -ra --durations=30 "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
exit $rc
