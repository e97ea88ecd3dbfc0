"""`spro-mcore pav train` checkpoints like the trainer: stopped by SIGTERM, it saves at a step boundary and exits
0; killed (-9, its whole process group) while a checkpoint is being written, the previous checkpoint stays
intact; rerun, it resumes, and the exported verifier (weights and head) and every metrics row equal an
uninterrupted run's bit for bit (fp32 CPU); keep_last holds. The kill moment is scaled by the uninterrupted
run's measured save time. A checkpoint also resumes at another layout (PP=2), resharded."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from spro_mcore.config import load_config
from spro_mcore.pav.collect import collect
from tests.pav.cli_run import ROOT, pav_env, pav_train, pav_train_command
from tests.pav.test_collect import overrides
from tests.pav.tiny_vocab import make_policy, write_prompts

pytestmark = pytest.mark.dist

STEPS, INTERVAL, KEEP = 5, 2, 2  # checkpoints at 2, 4 and 5 (the end); 2 and 4 kept until 5 is in


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("pavresume")
    base = overrides(make_policy(root / "policy"), write_prompts(root / "prompts.jsonl"), root / "data", n_mc=2,
                     num_prompts=8, prompts_per_batch=4, samples_per_prompt=2)
    collect(load_config(None, base))
    return base + [f"pav.train_steps={STEPS}", "pav.batch_size=4", "pav.eval_interval=2", "pav.heldout_fraction=0.25",
                   "optim.lr=0.003", "optim.warmup_steps=2", f"checkpoint.interval={INTERVAL}",
                   f"checkpoint.keep_last={KEEP}", "logging.level=INFO"]


def _command(args, verifier_dir):
    return pav_train_command([*args, f"pav.verifier_dir={verifier_dir}"])


def _run(args, verifier_dir) -> subprocess.CompletedProcess:
    return pav_train([*args, f"pav.verifier_dir={verifier_dir}"], timeout=300)


def _rows(verifier_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(verifier_dir) / "metrics.jsonl").read_text().splitlines()]


def _check_on_disk(ckpts: Path) -> list[int]:
    """What a kill may leave: only complete, intact step_<N> directories; `latest` names one of them."""
    from spro_mcore.trainer.checkpoint import files

    complete = files.complete_checkpoints(ckpts)
    for c in complete:
        files.verify(c)
    assert not files.incomplete_checkpoints(ckpts)
    assert files.read_latest(ckpts) in complete
    return sorted(files.step_of(c) for c in complete)


def test_kill9_mid_save_resumes_to_the_uninterrupted_verifier(collection, tmp_path):
    from safetensors.torch import load_file

    from spro_mcore.trainer.checkpoint import files

    ref, out = tmp_path / "ref", tmp_path / "run"
    _run(collection, ref)
    rows = {r["step"]: r for r in _rows(ref)}
    save_s = rows[5]["time/elapsed"] - rows[4]["time/elapsed"]  # step 4's checkpoint, measured

    # SIGTERM once step 1 is done: the run stops at a step boundary with a checkpoint there, exit 0
    log = open(tmp_path / "sigterm.log", "w")  # a file, not a pipe: a full pipe would block the run
    p = subprocess.Popen(_command(collection, out), cwd=ROOT, env=pav_env(), stdout=subprocess.DEVNULL,
                         stderr=log, start_new_session=True)
    deadline = time.monotonic() + 240
    while p.poll() is None and time.monotonic() < deadline and not (
            (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 1):
        time.sleep(0.005)
    assert p.poll() is None, "the run ended before SIGTERM"
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=240)
    log.close()
    err = (tmp_path / "sigterm.log").read_text()
    assert p.returncode == 0 and "stopped at step" in err, err[-2000:]
    stopped = max(_check_on_disk(out / "checkpoints"))
    assert stopped < STEPS and len(_rows(out)) == stopped and not (out / "pav_verifier.json").exists()

    # kill -9 of the resumed run while step 4's checkpoint is being written
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    p = subprocess.Popen(_command(collection, out), cwd=ROOT, env=pav_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)  # own group: kill -9 takes it all
    ckpts, deadline = out / "checkpoints", time.monotonic() + 240
    while p.poll() is None and time.monotonic() < deadline:  # step 4's save has begun
        if ckpts.is_dir() and any(c.name.startswith("step_4.partial-") for c in ckpts.iterdir()):
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.5) * save_s)
    assert p.poll() is None, f"the run ended before it could be killed (seed {seed})"
    os.killpg(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    kept = _check_on_disk(ckpts)
    assert kept and max(kept) in (stopped, 2, 4), (kept, seed)
    assert not (out / "pav_verifier.json").exists()

    r = _run(collection, out)
    assert "resumed from" in r.stderr and f"(step {max(kept)})" in r.stderr, r.stderr[-2000:]
    for name in ("model.safetensors", "value_head.safetensors"):
        a, b = load_file(str(ref / name)), load_file(str(out / name))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]
    assert strip(_rows(ref)) == strip(_rows(out)) and len(_rows(out)) == STEPS
    info = lambda d: json.loads((d / "pav_verifier.json").read_text())["final_metrics"]
    assert info(ref) == info(out)
    assert _check_on_disk(ckpts) == [4, 5]  # keep_last=2
    assert files.read_latest(ckpts).name == f"step_{STEPS}"


def test_resume_at_another_layout_reshards(collection, tmp_path):
    """A one-process checkpoint resumed at PP=2 (2 processes): verifier and optimizer state are resharded, so
    the rest of the run equals the one-process run's up to float rounding."""
    import torch
    from safetensors.torch import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    pav_train([*collection, "checkpoint.keep_last=3", f"pav.verifier_dir={one}"])
    r = pav_train([*collection, "checkpoint.keep_last=3", f"pav.verifier_dir={two}", "parallel.pp=2",
                   f"checkpoint.resume={one / 'checkpoints' / 'step_2'}"], nproc=2)
    assert "resharded" in r.stderr and "(step 2)" in r.stderr, r.stderr[-2000:]
    a, b = {x["step"]: x for x in _rows(one)}, {x["step"]: x for x in _rows(two)}
    assert sorted(b) == [3, 4, 5]
    for step in b:
        for k in ("train/loss", "train/lr", "eval/bce", "eval/brier"):
            if k in a[step]:
                assert b[step][k] == pytest.approx(a[step][k], rel=1e-5, abs=1e-7), (step, k)
    for name in ("model.safetensors", "value_head.safetensors"):
        x, y = load_file(str(one / name)), load_file(str(two / name))
        assert x.keys() == y.keys()
        for k in x:
            # Adam divides by sqrt(v): a weight with a tiny gradient carries PP's reduction-order rounding at ~1e-6
            torch.testing.assert_close(y[k], x[k], rtol=1e-5, atol=5e-6)
