"""`spro-mcore study` end to end through the CLI: a tiny grid (2 cells x 2 seeds x 2 steps) of real runs,
resuming a stopped study, a failing run, and the aggregate of synthetic metrics files against a hand
computation."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spro_mcore.study.code_revision import code_revision
from spro_mcore.study.runner import MARKER, run_record
from spro_mcore.study.spec import load_study

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BASE = str(ROOT / "configs" / "quickstart_cpu.yaml")
TINY = {  # a few-second run: tiny groups, short responses, 4 held-out problems
    "trainer.total_steps": 2, "data.prompts_per_step": 2, "rollout.n": 4, "rollout.max_new_tokens": 24,
    "data.synthetic_train_size": 16, "data.synthetic_eval_size": 4, "trainer.eval_interval": 1,
    "trainer.eval_n": 2, "checkpoint.export_hf": False, "logging.tensorboard": False, "optim.lr": 1e-3,
}
GRID = [{"name": "grpo", "algo.estimator": "grpo"}, {"name": "spro", "algo.estimator": "spro", "algo.beta": 1.0}]
T1 = 12.706204736  # t(0.975, 1): two seeds


def write_study(path: Path, out: Path, grid=GRID, seeds=(1, 2)) -> Path:
    path.write_text(yaml.safe_dump({"base": BASE, "output_dir": str(out), "seeds": list(seeds),
                                    "overrides": TINY, "grid": grid}, sort_keys=False))
    return path


def study_cli(study: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.run([sys.executable, "-m", "spro_mcore.cli", "study", "--config", str(study), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def read_rows(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The tiny study, run once: (study file, output dir, completed process)."""
    tmp = tmp_path_factory.mktemp("study")
    study = write_study(tmp / "study.yaml", tmp / "out")
    r = study_cli(study)
    assert r.returncode == 0, r.stderr[-3000:]
    return study, tmp / "out", r


def test_tiny_grid_end_to_end(done):
    _, out, r = done
    assert "4 of 4 runs complete" in r.stdout
    for name in ("report.md", "summary.json", "acc_vs_step.png", "pass_at_k_vs_step.png", "final.png"):
        assert (out / name).is_file(), name
    assert (out / "acc_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    cells = {c["name"]: c for c in summary["cells"]}
    assert list(cells) == ["grpo", "spro"]
    # the pinned fields, recomputed by hand from the runs' own metrics files
    finals = {}
    for name in cells:
        finals[name] = {s: read_rows(out / "runs" / name / f"seed_{s}")[-1] for s in (1, 2)}
        assert all(row["step"] == 2 for row in finals[name].values())
        accs = [finals[name][s]["eval/acc"] for s in (1, 2)]
        mean, half = sum(accs) / 2, T1 * abs(accs[0] - accs[1]) / 2  # sd/sqrt(2) = |a-b|/2 for two values
        c = cells[name]
        assert c["overrides"] == {k: v for k, v in GRID[list(cells).index(name)].items() if k != "name"}
        assert c["seeds"] == [1, 2]
        assert c["final_acc_mean"] == pytest.approx(mean)
        assert c["final_acc_ci95"] == pytest.approx([mean - half, mean + half])
    # steps to target: GRPO's best seed-mean accuracy over steps 0..2, reached first at which step?
    by_step = {n: {st: sum(r["eval/acc"] for r in [x for s in (1, 2) for x in read_rows(out / "runs" / n / f"seed_{s}")
                                                   if x["step"] == st]) / 2 for st in (0, 1, 2)} for n in cells}
    target = max(by_step["grpo"].values())
    for n in cells:
        first = next((st for st in (0, 1, 2) if by_step[n][st] >= target - 1e-12), None)
        assert cells[n]["steps_to_target"] == first and cells[n]["target_acc"] == pytest.approx(target)
    assert cells["spro"]["reference"] == "grpo"
    diff = [finals["spro"][s]["eval/acc"] - finals["grpo"][s]["eval/acc"] for s in (1, 2)]
    assert cells["spro"]["paired_diff_mean"] == pytest.approx(sum(diff) / 2)
    assert cells["spro"]["msa_to_outcome_ratio_mean"] is not None and cells["grpo"]["msa_to_outcome_ratio_mean"] in (0.0, None)
    report = (out / "report.md").read_text()
    assert "Runs complete: 4 of 4" in report and "| spro |" in report
    # every run records the code it was made with (this checkout's revision), and the report says it once
    code = code_revision()
    assert all(json.loads((p.parent / MARKER).read_text())["code"] == [code] for p in out.glob("runs/*/seed_*/metrics.jsonl"))
    assert summary["code_revisions"] == [code] and f"Code: `{code}` for every run." in report


def test_stopped_study_resumes_without_rerunning_complete_runs(done, tmp_path):
    study, out, _ = done
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    stopped = copy / "runs" / "spro" / "seed_2"
    before = {p: (p.stat().st_mtime_ns, p.read_text()) for p in copy.glob("runs/*/seed_*/metrics.jsonl") if stopped not in p.parents}
    shutil.rmtree(stopped / "checkpoints")
    (stopped / MARKER).unlink()  # as if the study was stopped before this run finished
    (stopped / "metrics.jsonl").write_text("")
    r = study_cli(study, f"output_dir={copy}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 of 4 runs complete" in r.stdout
    for p, (mtime, text) in before.items():  # complete runs were not run again
        assert p.stat().st_mtime_ns == mtime and p.read_text() == text, p
        assert len((p.parent / "study_attempts.jsonl").read_text().splitlines()) == 1
    assert len((stopped / "study_attempts.jsonl").read_text().splitlines()) == 2
    # the rerun is the same run: the trainer is deterministic on CPU
    strip = lambda rows: [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]  # noqa: E731
    assert strip(read_rows(stopped)) == strip(read_rows(out / "runs" / "spro" / "seed_2"))


def test_cells_option_runs_only_the_named_cells(done, tmp_path):
    study, out, _ = done
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for name in ("grpo", "spro"):  # both seed-2 runs incomplete: only grpo's may be run again
        run = copy / "runs" / name / "seed_2"
        shutil.rmtree(run / "checkpoints")
        (run / MARKER).unlink()
    r = study_cli(study, f"output_dir={copy}", "--cells", "grpo")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 of 4 runs complete" in r.stdout
    assert (copy / "runs" / "grpo" / "seed_2" / MARKER).is_file()
    assert not (copy / "runs" / "spro" / "seed_2" / MARKER).exists()
    assert len((copy / "runs" / "spro" / "seed_2" / "study_attempts.jsonl").read_text().splitlines()) == 1
    bad = study_cli(study, f"output_dir={copy}", "--cells", "grpo,nope")
    assert bad.returncode != 0
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("spro-mcore study: error: --cells names nope; the study's cells are grpo, spro"), last


def test_sigterm_to_the_study_leaves_the_preempted_run_incomplete(tmp_path):
    """SIGTERM is passed on: the trainer saves a checkpoint and exits 0 as a preempted job does; the study
    must not take that run for complete (it resumes on the next invocation) and must itself exit non-zero."""
    out = tmp_path / "out"
    study = write_study(tmp_path / "study.yaml", out, grid=GRID[:1], seeds=(1,))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    p = subprocess.Popen([sys.executable, "-m", "spro_mcore.cli", "study", "--config", str(study),
                          "trainer.total_steps=200", "trainer.eval_interval=0", "checkpoint.interval=0"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = out / "runs" / "grpo" / "seed_1"
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:  # wait until step 1 is written: handler installed
        if (run / "metrics.jsonl").is_file() and any(r.get("step", 0) >= 1 for r in read_rows(run)):
            break
        time.sleep(0.1)
    assert p.poll() is None, p.communicate()[0][-3000:]
    p.send_signal(signal.SIGTERM)
    log = p.communicate(timeout=300)[0]
    assert p.returncode != 0, log[-3000:]
    attempts = [json.loads(l) for l in (run / "study_attempts.jsonl").read_text().splitlines()]
    assert attempts[-1]["returncode"] == 0, attempts  # the trainer stopped cleanly ...
    assert not (run / MARKER).exists()  # ... but the run is not complete
    assert max(r["step"] for r in read_rows(run)) < 200


def test_failing_run_gives_one_line_and_keeps_completed_runs(done, tmp_path):
    _, out, _ = done
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    grid = [*GRID, {"name": "broken", "model.path": "builtin:no_such_model"}]
    study = write_study(tmp_path / "study.yaml", copy, grid=grid)
    r = study_cli(study, "seeds=[1]")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("spro-mcore study: error: run broken seed 1 failed with exit"), last
    assert "no shipped model 'no_such_model'" in last and "completed runs are kept" in last
    summary = json.loads((copy / "summary.json").read_text())
    cells = {c["name"]: c for c in summary["cells"]}
    assert cells["grpo"]["seeds"] == [1] and cells["spro"]["seeds"] == [1] and cells["broken"]["seeds"] == []
    assert cells["broken"]["final_acc_mean"] is None
    assert all((copy / "runs" / n / f"seed_{s}" / MARKER).is_file() for n in ("grpo", "spro") for s in (1, 2))


def test_aggregate_of_synthetic_metrics_files_equals_hand_computation(tmp_path):
    """Complete runs are never rerun: the study only aggregates these hand-written metrics files."""
    study_file = write_study(tmp_path / "study.yaml", tmp_path / "out", seeds=(1, 2, 3))
    study = load_study(study_file)
    acc = {  # cell -> seed -> eval/acc at steps 0, 1, 2
        "grpo": {1: [0.2, 0.4, 0.5], 2: [0.3, 0.5, 0.6], 3: [0.4, 0.3, 0.7]},  # seed means 0.3, 0.4, 0.6
        "spro": {1: [0.2, 0.6, 0.6], 2: [0.3, 0.6, 0.8], 3: [0.4, 0.6, 0.7]},  # seed means 0.3, 0.6, 0.7
    }
    for cell in study.cells:
        for seed in study.seeds:
            d = study.run_dir(cell, seed)
            d.mkdir(parents=True)
            rows = [{"step": s, "eval/acc": a, "eval/pass@2": a, "eval/sampled_acc": round(1 - a, 6)}
                    for s, a in enumerate(acc[cell.name][seed])]
            for r in rows[1:]:
                r.update({"adv/grpo_abs_mean": 0.5, "adv/msa_abs_mean": 0.1 if cell.name == "spro" else 0.0,
                          "entropy/mean": 0.3, "response_length/mean": 20.0})
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (d / MARKER).write_text(json.dumps(run_record(study, cell, seed)))
            (d / "study_attempts.jsonl").write_text(json.dumps({"returncode": 0, "wall_s": 60.0 * seed}) + "\n")
    r = study_cli(study_file, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list((tmp_path / "out").glob("runs/*/*/train.log"))  # nothing was run
    cells = {c["name"]: c for c in json.loads((tmp_path / "out" / "summary.json").read_text())["cells"]}
    t2 = 4.302652730  # t(0.975, 2)
    # spro final accuracies 0.6, 0.8, 0.7: mean 0.7, sd 0.1, half-width t2 * 0.1 / sqrt(3)
    assert cells["spro"]["final_acc_mean"] == pytest.approx(0.7)
    assert cells["spro"]["final_acc_ci95"] == pytest.approx([0.7 - t2 * 0.1 / 3**0.5, 0.7 + t2 * 0.1 / 3**0.5])
    # GRPO's best seed mean is 0.6 (step 2); SPRO's seed mean reaches it at step 1: efficiency 2/1
    assert cells["grpo"]["steps_to_target"] == 2 and cells["spro"]["steps_to_target"] == 1
    assert cells["spro"]["efficiency_ratio"] == pytest.approx(2.0)
    # paired differences 0.1, 0.2, 0.0: mean 0.1, sd 0.1
    assert cells["spro"]["paired_diff_mean"] == pytest.approx(0.1)
    assert cells["spro"]["paired_diff_ci95"] == pytest.approx([0.1 - t2 * 0.1 / 3**0.5, 0.1 + t2 * 0.1 / 3**0.5])
    assert cells["spro"]["msa_to_outcome_ratio_mean"] == pytest.approx(0.2)
    assert cells["grpo"]["wall_s_mean"] == pytest.approx(120.0)
    assert cells["spro"]["curves"]["eval/acc"]["mean"] == pytest.approx([0.3, 0.6, 0.7])
    # runs from before revisions were recorded say so; runs made with two revisions are named in the report
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["code_revisions"] == ["unrecorded"]
    for cell, code in zip(study.cells, ("0123456789ab", "ba9876543210+modified")):
        for seed in study.seeds:
            marker = study.run_dir(cell, seed) / MARKER
            marker.write_text(json.dumps({**json.loads(marker.read_text()), "code": [code]}))
    r = study_cli(study_file, "--report-only", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["code_revisions"] == [
        "0123456789ab", "ba9876543210+modified"]
    assert ("Code revisions (runs made with different code): `0123456789ab`, `ba9876543210+modified`."
            in (tmp_path / "out" / "report.md").read_text())
    # --report-only: a missing run is reported as missing, not started
    (study.run_dir(study.cells[1], 3) / MARKER).unlink()
    r = study_cli(study_file, "--report-only", timeout=300)
    assert r.returncode == 0 and "5 of 6 runs complete" in r.stdout, r.stderr[-3000:]
    assert not list((tmp_path / "out").glob("runs/*/*/train.log"))
    spro = json.loads((tmp_path / "out" / "summary.json").read_text())["cells"][1]
    assert spro["seeds"] == [1, 2] and spro["final_acc_mean"] == pytest.approx(0.7)
    assert "[1, 2] (not run: [3])" in (tmp_path / "out" / "report.md").read_text()
    # the target is GRPO's best seed mean over the seeds both cells completed (1, 2: 0.55, not 0.6 over three)
    assert spro["target_acc"] == pytest.approx(0.55)
    assert (spro["steps_to_target"], spro["reference_steps_to_target"]) == (1, 2)
    # metric=eval/sampled_acc (here 1 - greedy): the same runs ranked by the sampled accuracy
    r = study_cli(study_file, "--report-only", "metric=eval/sampled_acc", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    spro = summary["cells"][1]
    assert summary["metric"] == "eval/sampled_acc" and spro["final_acc_mean"] == pytest.approx(1 - 0.7)
    assert spro["paired_diff_mean"] == pytest.approx(-0.15)  # seeds 1, 2: (0.4 - 0.5 + 0.2 - 0.4) / 2
    assert (tmp_path / "out" / "greedy_acc_vs_step.png").read_bytes()[:4] == b"\x89PNG"
    assert "`eval/sampled_acc`: held-out sampled accuracy" in (tmp_path / "out" / "report.md").read_text()
