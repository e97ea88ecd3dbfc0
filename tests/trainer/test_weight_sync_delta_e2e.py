"""rollout.weight_sync_delta through the `spro-mcore train` command line with the vLLM colocated engine (folder
transport): 3 steps, the syncs after steps 1 and 2 go through the delta folder (the first one full, the second a
delta on it, checked by vLLM's worker), and the engine that generates step 3 agrees with the trainer's
log-probs of its samples (a delta that lost the update would leave the engine one step stale)."""

import json
import math

import pytest

from tests.trainer.e2e_helpers import metrics, train

pytestmark = pytest.mark.e2e


def test_vllm_folder_delta_three_steps(tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "run"
    train(out, "rollout.engine=vllm", "rollout.weight_sync=folder", "rollout.weight_sync_delta=true",
          f"rollout.weight_sync_dir={tmp_path / 'sync'}", "trainer.total_steps=3", "trainer.eval_interval=0",
          timeout=600)
    m = metrics(out)
    assert sorted(m) == [1, 2, 3]
    for step in (1, 2, 3):
        assert all(math.isfinite(v) for v in m[step].values())
        assert m[step]["weight_sync/bytes"] > 0
    # the manifest of the last sync (version 3) is in the folder; step 3's engine had version 2's weights
    assert m[3]["rollout/engine_logprob_abs_diff_mean"] < 1e-3
    index = json.loads((tmp_path / "sync" / "model.safetensors.index.json").read_text())
    manifest = index["metadata"]["spro_weight_sync"]["manifest"]
    assert manifest["version"] == 3 and manifest["base"] == 2
