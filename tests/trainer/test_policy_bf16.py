"""A bf16 policy is bf16 throughout and its training state (weights + distributed optimizer + schedule) goes
through a dist checkpoint and back. megatron-core's torch-norm fallback makes fp32 norm weights in a bf16
model, and its distributed optimizer then maps the optimizer states of mixed-dtype groups to the wrong
parameters: the sharded state dict fails (what tools/gpu_check.sh first met)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.dist
ROOT = Path(__file__).resolve().parents[2]


def _bf16_round_trip(out_dir: str):
    from spro_mcore.config.schema import Config
    from spro_mcore.models import dist_checkpoint
    from spro_mcore.parallel import initialize_model_parallel, seed_everything
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy
    from spro_mcore.trainer.setup import resolve_model_path

    layout = initialize_model_parallel(1, 1)
    seed_everything(0)
    cfg = Config()
    cfg.model.dtype, cfg.model.transformer_impl, cfg.optim.lr = "bfloat16", "local", 1e-3
    path = resolve_model_path("builtin:tiny_base")
    policy = MegatronPolicy(cfg, layout, path, path, total_updates=4)
    dtypes = {str(p.dtype) for m in policy.model for p in m.module.parameters()}
    for m in policy.model:  # one optimizer step with a non-zero gradient, so the states are not all zero
        for p in m.module.parameters():
            p.main_grad.copy_(torch.randn(p.shape))
    policy.optimizer.step()
    saved = {n: t.float().clone() for n, t in policy.export_weights()}
    import os

    os.makedirs(out_dir)
    dist_checkpoint.save(policy.sharded_state_dict(), out_dir)
    for m in policy.model:
        for p in m.module.parameters():
            p.data.zero_()
    policy.load_state_dict(dist_checkpoint.load(policy.sharded_state_dict(is_loading=True), out_dir))
    loaded = {n: t.float().clone() for n, t in policy.export_weights()}
    return {"dtypes": dtypes, "same": all(torch.equal(saved[n], loaded[n]) for n in saved), "n": len(saved)}


def test_bf16_policy_checkpoint_round_trip(tmp_path):
    # its own process: the dist-checkpoint writer starts a process, which a multiprocessing child may not
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, __file__, str(tmp_path / "ckpt")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["dtypes"] == ["torch.bfloat16"]
    assert out["n"] > 0 and out["same"]


if __name__ == "__main__":
    result = _bf16_round_trip(sys.argv[1])
    print(json.dumps({**result, "dtypes": sorted(result["dtypes"])}))
