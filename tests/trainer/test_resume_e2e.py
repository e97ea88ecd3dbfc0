"""Real `spro-mcore train` processes stopped for real and resumed, compared with an uninterrupted run:

- kill -9 (of the whole process group) at random moments, every other time the moment a checkpoint starts
  being written, SPRO_KILL_LOOPS times (default 3): after every kill each `step_<N>` on disk verifies and
  `latest` names one of them; metrics.jsonl then also gets the torn last line a kill during a metrics write
  leaves; the final run ends with the uninterrupted run's weights, bit for bit, and the same metrics.jsonl
  rows (timings aside), the torn lines kept aside, never in the file;
- SIGTERM: the run stops after the current step, saves it and exits 0; resuming from it gives the same end;
- a 2-"node" run on localhost (two torchrun launches, --nnodes=2, node rank 0/1, one master port) resumes the
  uninterrupted run's step-2 checkpoint at TP=2 (a different layout), trains and checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spro_mcore.trainer.checkpoint import files

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
ARGS = [
    f"trainer.total_steps={STEPS}", "data.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=24",
    "data.synthetic_train_size=64", "data.synthetic_eval_size=4", "trainer.eval_interval=2", "trainer.eval_n=2",
    "logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.interval=1", "checkpoint.keep_last=3",
    "algo.entropy_coef=0.01",  # every update moves the weights, whatever the rewards
]
VOLATILE = ("time/", "weight_sync/seconds")  # wall-clock metrics differ between any two runs


def _env(threads: str = "2") -> dict:
    return dict(os.environ, OMP_NUM_THREADS=threads, PYTHONWARNINGS="ignore", PYTHON=sys.executable,
                PYTHONPATH=str(ROOT))


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "spro_mcore.cli", "train", "--config", str(ROOT / "configs" / "quickstart_cpu.yaml"),
            f"trainer.output_dir={out}", *ARGS, *extra]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    p = subprocess.run(_cmd(out, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, f"train exited {p.returncode}:\n{p.stderr[-4000:]}"
    return p


def _start(out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(_cmd(out), cwd=ROOT, env=_env(), stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # own process group: kill -9 takes its children too


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "hf_final" / "model.safetensors"))


def _rows(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows}


def _assert_same_run(ref: Path, got: Path) -> None:
    a, b = _weights(ref), _weights(got)
    assert a.keys() == b.keys()
    bad = [k for k in a if not (a[k] == b[k]).all()]
    assert not bad, f"{len(bad)} tensors differ from the uninterrupted run, e.g. {bad[:3]}"
    assert _rows(ref) == _rows(got)


def _assert_consistent(ckpts: Path) -> list[int]:
    """What a kill may leave: only complete, intact step_<N> directories; `latest` names one of them."""
    steps = []
    for p in sorted(ckpts.glob("step_*")):
        if files.step_of(p) is not None:
            files.verify(p)  # raises with the path and the problem
            steps.append(files.step_of(p))
    latest = files.read_latest(ckpts)
    if latest is not None:
        assert latest.is_dir() and files.step_of(latest) in steps, f"latest -> {latest}, complete: {steps}"
    return steps


def _tear_metrics(out: Path) -> bool:
    """Leave what a kill in the middle of writing a metrics row leaves: a last line cut short."""
    if not (out / "metrics.jsonl").exists():
        return False
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 99, "reward/mean": 0.1')
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    t0 = time.monotonic()
    _run(out)
    (out.parent / "seconds").write_text(f"{time.monotonic() - t0:.3f}")  # the kill loop's time scale
    from safetensors.torch import load_file

    from spro_mcore.trainer.setup import resolve_model_path

    base = load_file(str(Path(resolve_model_path("builtin:tiny_base")) / "model.safetensors"))
    final = _weights(out)
    assert any(not (base[k] == final[k]).all() for k in final), "training did not change the weights"
    return out


@pytest.mark.e2e
def test_kill9_loop_resumes_to_the_uninterrupted_result(reference, tmp_path):
    loops = int(os.environ.get("SPRO_KILL_LOOPS", "3"))
    seed = int(os.environ.get("SPRO_KILL_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    out, log = tmp_path / "run", tmp_path / "train.log"
    ckpts = out / "checkpoints"
    history, torn = [], False
    for i in range(loops):
        p = _start(out, log)
        if i % 2 == 1:  # the moment a checkpoint write begins
            deadline = time.monotonic() + 120
            while p.poll() is None and time.monotonic() < deadline:
                if ckpts.is_dir() and any(".partial-" in q.name for q in ckpts.iterdir()):
                    time.sleep(rng.uniform(0, 0.3))
                    break
                time.sleep(0.005)
            moment = "during a checkpoint write"
        else:
            # a random moment within the uninterrupted run's wall time (machines differ several-fold)
            delay = rng.uniform(0.25, 0.85) * float((reference.parent / "seconds").read_text())
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
            moment = f"after {delay:.1f}s"
        writing = ckpts.is_dir() and any(".partial-" in q.name for q in ckpts.iterdir())
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        rc = p.wait()
        steps = _assert_consistent(ckpts) if ckpts.is_dir() else []
        if rc == -signal.SIGKILL:
            torn = _tear_metrics(out) or torn
        history.append((moment, rc, writing, steps))
    if not torn:
        torn = _tear_metrics(out)
    _run(out)  # the last launch runs to the end
    assert any(rc == -signal.SIGKILL for _, rc, _, _ in history), f"no launch was killed: {history}"
    _assert_same_run(reference, out)
    assert (out / "metrics.jsonl").read_bytes().endswith(b"\n")
    print(f"kill loop seed={seed}, torn metrics line={torn}: " + "; ".join(f"{m} rc={rc} partial={w} complete={s}" for m, rc, w, s in history))


@pytest.mark.e2e
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(reference, tmp_path):
    out, log = tmp_path / "run", tmp_path / "train.log"
    p = _start(out, log)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while p.poll() is None and time.monotonic() < deadline:  # wait for step 1 to be under way or done
        if metrics.exists() and any(json.loads(x).get("step", 0) >= 1 for x in metrics.read_text().splitlines() if x):
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be preempted"
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=120)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "received SIGTERM" in text and "stopped at step" in text
    stopped = max(_rows(out))
    assert 1 <= stopped < STEPS
    assert files.read_latest(out / "checkpoints").name == f"step_{stopped}"
    files.verify(out / "checkpoints" / f"step_{stopped}")
    assert not (out / "hf_final").exists()  # a preempted run is not finished
    r = _run(out)
    assert f"resumed from {out / 'checkpoints' / f'step_{stopped}'}" in r.stderr
    _assert_same_run(reference, out)


@pytest.mark.e2e
@pytest.mark.dist
def test_two_node_localhost_run_resumes_at_tp2_and_checkpoints(reference, tmp_path):
    import shutil

    from spro_mcore.parallel.distributed import free_port

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step_2", out / "checkpoints" / "step_2")
    shutil.copy(reference / "metrics.jsonl", out / "metrics.jsonl")
    port = str(free_port())
    script = ROOT / "launch" / "torchrun_multi_node.sh"
    nodes = []
    for rank in (0, 1):
        env = dict(_env("1"), NNODES="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NPROC="1")
        nodes.append(subprocess.Popen(
            ["bash", str(script), "--config", str(ROOT / "configs" / "quickstart_cpu.yaml"),
             f"trainer.output_dir={out}", *ARGS, "parallel.tp=2"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [n.communicate(timeout=400)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "resumed from" in logs[0] and "layout" in logs[0]  # resharded, RNG re-seeded with a warning
    ckpts = out / "checkpoints"
    assert _assert_consistent(ckpts) == [2, 3, 4]
    meta = json.loads((ckpts / f"step_{STEPS}" / "spro_mcore_model.json").read_text())
    assert meta["saved_with"] == {"tp": 2, "pp": 1}
    rows, ref_rows = _rows(out), _rows(reference)
    assert sorted(rows) == sorted(ref_rows)
    # the first resumed step starts from the same weights and data: its on-policy numbers agree
    for k in ("reward/mean", "response_length/mean", "ppo/ratio_mean"):
        assert abs(rows[3][k] - ref_rows[3][k]) < 1e-3, (k, rows[3][k], ref_rows[3][k])
    a, b = _weights(reference), _weights(out)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 2e-5, diff  # TP2 reorders reductions (~1e-7 here); two steps move weights by ~1e-3
