"""A first run looks clean and keeps an earlier run's files: the quickstart config, one step, through the CLI
in a fresh process, into an output folder that holds a finished earlier run (started over with
checkpoint.resume=never). No line of its output is a Python warning; one start banner names the model,
layout, engine, estimator and output folder; every earlier file is still there, byte for byte (moved aside
where this run writes its own)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WARNING = re.compile(r"\b\w*Warning\b|warnings\.warn\(")


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.e2e
def test_quickstart_one_step_is_quiet_and_keeps_the_earlier_run(tmp_path):
    out = tmp_path / "quickstart"
    (out / "hf_final").mkdir(parents=True)
    (out / "checkpoints" / "step_60").mkdir(parents=True)
    earlier = {
        "config.yaml": b"trainer:\n  total_steps: 60\n",
        "metrics.jsonl": b'{"step": 0, "eval/acc": 0.6}\n{"step": 60, "eval/acc": 0.79}\n',
        "hf_final/model.safetensors": b"the earlier run's final policy",
        "checkpoints/step_60/weights": b"the earlier run's checkpoint",
    }
    for rel, data in earlier.items():
        (out / rel).write_bytes(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARNINGS")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run(
        [sys.executable, "-m", "spro_mcore.cli", "train", "--config", str(ROOT / "configs" / "quickstart_cpu.yaml"),
         f"trainer.output_dir={out}", "trainer.total_steps=1", "data.prompts_per_step=4", "rollout.n=4",
         "rollout.max_new_tokens=24", "data.synthetic_eval_size=4", "trainer.eval_n=2", "checkpoint.resume=never"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    lines = text.splitlines()
    assert not [l for l in lines if WARNING.search(l)], "\n".join(l for l in lines if WARNING.search(l))
    banners = [l for l in lines if "train: model " in l]
    assert len(banners) == 1, text
    for words in ("model builtin:tiny_base", "layout world 1 = tp 1 x pp 1 x cp 1 x dp 1", "engine hf/colocated",
                  "estimator spro", f"output {out}"):
        assert words in banners[0], (words, banners[0])
    assert "Transformer Engine not installed: using the local transformer implementation" in text
    assert len(lines) <= 24, f"{len(lines)} lines:\n{text}"  # one screen
    after = _digests(out)
    kept = set(after.values())
    for rel, data in earlier.items():
        assert hashlib.sha256(data).hexdigest() in kept, f"the earlier {rel} is gone"
    assert any(re.fullmatch(r"metrics\.jsonl\.abandoned-\d+", p) for p in after), sorted(after)
    assert any(re.fullmatch(r"config\.yaml\.replaced-\d+", p) for p in after), sorted(after)
    assert any(re.fullmatch(r"hf_final\.replaced-\d+/model\.safetensors", p) for p in after), sorted(after)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [eval(r.replace("null", "None"))["step"] for r in rows] == [0, 1]  # this run's rows only
    assert "ERROR" not in text and "Traceback" not in text


@pytest.mark.unit
def test_debug_level_shows_the_filtered_warnings_again():
    code = ("import warnings, sys; from spro_mcore import quiet; quiet.install(sys.argv[1]);"
            "warnings.warn('Transformer Engine and Apex are not installed. Falling back', UserWarning)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    shown = {level: subprocess.run([sys.executable, "-c", code, level], env=env, capture_output=True, text=True).stderr
             for level in ("INFO", "DEBUG")}
    assert "UserWarning" not in shown["INFO"]
    assert "UserWarning: Transformer Engine and Apex are not installed" in shown["DEBUG"]
