"""Checkpointer save/restore of the whole training state with real megatron-core under real torchrun (2 CPU
processes, gloo): a run at TP1 x DP2 (distributed optimizer) saves at step 2 and continues to step 4; runs
resumed from step 2 at the same layout (bit for bit), at TP2 and at PP2 (dist checkpoints reshard the model
and optimizer) must reach the same step-4 weights. Also: async save, RNG / data-position restore, HF export
of a checkpoint, fallback from a corrupt newer checkpoint, and an explicit bad path giving one clear error.

This file is also the torchrun worker (`python -m torch.distributed.run ... test_checkpoint_dist.py MODE`).
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS, SAVE_AT, LR = 4, 2, 1e-3


class CountingPrompts:
    """The checkpointer's view of the prompt source: an object whose position is its state."""

    def __init__(self):
        self.position = 0

    def advance(self):
        self.position += 1

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def _train_step(actor, layout, step: int) -> None:
    """One optimizer step on this replica's slice of a fixed global batch (loss normalised by the global
    token count, so every TP/PP/DP layout computes the same update)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    g = torch.Generator().manual_seed(1000 + step)
    global_ids = torch.randint(0, 320, (4, 12), generator=g)
    per = 4 // layout.dp
    ids = global_ids[layout.dp_rank * per:(layout.dp_rank + 1) * per]
    pos = torch.arange(12)[None].expand(per, -1)
    total_tokens = global_ids.numel()

    def forward_step(it, model):
        x = next(it)
        out = model(x, pos, None, labels=torch.roll(x, -1, 1))
        return out, lambda o: (o.float().sum() / total_tokens, torch.tensor(1), {"loss": o.float().sum().detach()})

    for m in actor.model:
        m.zero_grad_buffer()
    actor.optimizer.zero_grad()
    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([ids]), model=actor.model,
                                num_microbatches=1, seq_length=12, micro_batch_size=per, forward_only=False)
    for m in actor.model:
        m.finish_grad_sync()
    actor.optimizer.step()
    actor.scheduler.step(increment=1)


def _draws() -> list[float]:
    from megatron.core import tensor_parallel

    with tensor_parallel.get_cuda_rng_tracker().fork():
        tracked = torch.rand(1).item()
    return [random.random(), float(np.random.rand()), torch.rand(1).item(), tracked]


def worker(mode: str, hf_dir: str, out_dir: str, tp: int, pp: int, resume: str, async_save: bool) -> None:
    import torch.distributed as dist

    from spro_mcore.config.schema import Config
    from spro_mcore.models.hf_checkpoint import CheckpointError
    from spro_mcore.parallel import initialize_model_parallel, seed_everything
    from spro_mcore.trainer.policy.megatron_policy import MegatronPolicy
    from spro_mcore.trainer.checkpoint import Checkpointer

    layout = initialize_model_parallel(tp=tp, pp=pp)
    seed_everything(7)
    cfg = Config()
    cfg.model.transformer_impl = "local"
    cfg.optim.lr = LR
    cfg.trainer.output_dir = out_dir
    cfg.checkpoint.interval = SAVE_AT
    cfg.checkpoint.async_save = async_save
    cfg.checkpoint.resume = resume
    cfg.checkpoint.export_hf = False
    actor = MegatronPolicy(cfg, layout, hf_dir, hf_dir, total_updates=STEPS)
    parts = SimpleNamespace(policy=actor, prompts=CountingPrompts(), engine=None, model_path=hf_dir)
    result: dict = {"layout": [layout.tp, layout.pp, layout.dp]}

    if mode == "bad_path":  # an explicit bad checkpoint: one clear error, nothing loaded
        try:
            Checkpointer(cfg, layout).restore(parts)
            result["error"] = None
        except CheckpointError as e:
            result["error"] = str(e)
        cfg.checkpoint.resume = str(Path(out_dir) / "checkpoints" / f"step_{SAVE_AT}")

    ckpt = Checkpointer(cfg, layout)
    start = ckpt.restore(parts)
    result["start"] = start
    result["position_after_restore"] = parts.prompts.position
    trainer = SimpleNamespace(step_no=start, data_state=lambda step: copy.deepcopy(parts.prompts.state_dict()))
    for step in range(start + 1, STEPS + 1):
        if step == SAVE_AT + 1:
            result["draws_at_save"] = _draws()  # what the RNG gives right after the saved boundary
        _train_step(actor, layout, step)
        parts.prompts.advance()
        trainer.step_no = step
        if mode == "train":
            ckpt.maybe_save(trainer, step)
    if mode == "train":
        ckpt.finish(trainer)  # waits for the async save; step 4 was saved by maybe_save already
    weights = {n: t.clone() for n, t in actor.export_weights()}
    if mode == "resume" and layout.tp == 1:  # an engine failure inside the loop: saved state, one clear error
        from spro_mcore.errors import UserError
        from spro_mcore.rollout.engine import EngineError

        try:
            with ckpt.on_preemption(trainer):
                raise EngineError("engine server http://127.0.0.1:9 stopped answering after 3 retries")
        except UserError as e:
            result["fault"] = str(e)
    if mode == "train":  # the HF export of the saved step-4 checkpoint equals the live weights
        from spro_mcore.trainer.checkpoint.export import export_checkpoint_to_hf

        export_checkpoint_to_hf(Path(out_dir) / "checkpoints", Path(out_dir) / "hf_step4")
    if dist.get_rank() == 0:
        result["position"] = parts.prompts.position
        torch.save({"result": result, "weights": weights}, Path(out_dir) / f"result_{mode}_tp{tp}_pp{pp}.pt")
    dist.barrier()


def _torchrun(tmp: Path, mode: str, *, tp=1, pp=1, resume="auto", async_save=False) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_port()),
           __file__, mode, str(tmp / "hf"), str(tmp / "run"), str(tp), str(pp), resume, str(int(async_save))]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{mode} tp={tp} pp={pp} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p


def _port() -> int:
    from spro_mcore.parallel.distributed import free_port

    return free_port()


def _result(tmp: Path, mode: str, tp: int, pp: int) -> dict:
    return torch.load(tmp / "run" / f"result_{mode}_tp{tp}_pp{pp}.pt", weights_only=False)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The uninterrupted run: TP1 x DP2, async saves at steps 2 and 4."""
    sys.path.insert(0, str(ROOT))
    from tests.models.tiny_hf import make_tiny

    tmp = tmp_path_factory.mktemp("ckpt_dist")
    make_tiny(str(tmp / "hf"), "qwen2")
    _torchrun(tmp, "train", async_save=True)
    return tmp


@pytest.mark.dist
def test_uninterrupted_run_saves_complete_checkpoints(trained):
    ckpts = trained / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_2", "step_4"]
    assert (ckpts / "latest").read_text().strip() == "step_4"
    for s in ("step_2", "step_4"):
        manifest = json.loads((ckpts / s / "COMPLETE.json").read_text())
        assert {"metadata.json", "trainer_state.pt", "rng/rank_00000.pt", "rng/rank_00001.pt",
                "spro_mcore_model.json"} <= set(manifest["files"])
    # the checkpoint's HF export is the live policy, bit for bit
    from safetensors.torch import load_file

    live = _result(trained, "train", 1, 1)["weights"]
    exported = load_file(str(trained / "run" / "hf_step4" / "model.safetensors"))
    assert _max_diff(live, exported) == 0.0


@pytest.mark.dist
def test_resume_same_layout_is_bit_exact(trained):
    ckpts = trained / "run" / "checkpoints"
    _torchrun(trained, "resume", resume=str(ckpts / "step_2"))
    # step_4 lay past the resume point: set aside (kept), so it never mixes with the new attempt's
    assert len(list(ckpts.glob("step_4.abandoned-*"))) == 1
    ref, got = _result(trained, "train", 1, 1), _result(trained, "resume", 1, 1)
    r = got["result"]
    assert r["start"] == SAVE_AT and r["position_after_restore"] == SAVE_AT and r["position"] == STEPS
    assert r["draws_at_save"] == ref["result"]["draws_at_save"]  # python, numpy, torch, megatron tracker
    assert _max_diff(ref["weights"], got["weights"]) == 0.0
    # then the engine failed: step 4's update is kept, saved as finished, and named in the one error line
    assert r["fault"].startswith("the rollout engine failed (engine server http://127.0.0.1:9 stopped answering")
    assert str(ckpts / "step_4") in r["fault"]
    assert (ckpts / "latest").read_text().strip() == "step_4"
    from spro_mcore.trainer.checkpoint.files import verify

    assert verify(ckpts / "step_4")["step"] == 4


@pytest.mark.dist
def test_resume_falls_back_from_corrupt_checkpoint_and_reshards_to_tp2(trained):
    ckpts = trained / "run" / "checkpoints"
    shard = sorted((ckpts / "step_4").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated, as by a dying disk
    p = _torchrun(trained, "resume", tp=2, resume="auto")
    assert f"{ckpts / 'step_4'} is corrupt" in p.stderr + p.stdout
    assert not (ckpts / "step_4").exists() and list(ckpts.glob("step_4.abandoned-*"))  # kept, set aside
    ref, got = _result(trained, "train", 1, 1), _result(trained, "resume", 2, 1)
    assert got["result"]["start"] == SAVE_AT and got["result"]["layout"] == [2, 1, 1]
    diff = _max_diff(ref["weights"], got["weights"])
    assert diff < 2e-5, diff  # TP2 reorders reductions; losing the Adam state would move weights ~LR


@pytest.mark.dist
def test_resume_into_pp2_and_bad_explicit_path_error(trained):
    bad = sorted((trained / "run" / "checkpoints").glob("step_4.abandoned-*"))[-1:]  # the corrupt one
    assert bad, "runs after the corrupt-fallback test"
    bad = bad[0]
    _torchrun(trained, "bad_path", pp=2, resume=str(bad))
    got = _result(trained, "bad_path", 1, 2)
    assert got["result"]["error"] and str(bad) in got["result"]["error"] and "corrupt" in got["result"]["error"]
    ref = _result(trained, "train", 1, 1)
    assert got["result"]["start"] == SAVE_AT
    diff = _max_diff(ref["weights"], got["weights"])
    assert diff < 2e-5, diff


if __name__ == "__main__":
    mode, hf, out, tp, pp, resume, async_save = sys.argv[1:8]
    worker(mode, hf, out, int(tp), int(pp), resume, bool(int(async_save)))
