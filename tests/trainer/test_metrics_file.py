"""metrics.jsonl across runs: a torn last line (a kill during a write) is survivable, a resumed or restarted
run keeps only its own rows, and the earlier file is always kept aside byte for byte."""

from __future__ import annotations

import json

import pytest

from spro_mcore.errors import UserError
from spro_mcore.trainer.metrics import MetricsLogger, read_metric_rows

pytestmark = pytest.mark.unit
ROWS = b'{"step": 0, "eval/acc": 0.5}\n{"step": 1, "reward/mean": 0.1}\n{"step": 2, "reward/mean": 0.2}\n'


def _open(out, start_step):
    MetricsLogger(out, total_steps=5, tensorboard=False, progress_bar=False, start_step=start_step).close()
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    aside = sorted(out.glob("metrics.jsonl.abandoned-*"))
    return steps, [p.read_bytes() for p in aside]


def test_torn_last_line_is_dropped_and_kept_aside(tmp_path):
    torn = ROWS + b'{"step": 3, "reward/me'
    (tmp_path / "metrics.jsonl").write_bytes(torn)
    assert read_metric_rows(tmp_path / "metrics.jsonl") == ([json.loads(l) for l in ROWS.splitlines()], True)
    assert _open(tmp_path, start_step=2) == ([0, 1, 2], [torn])


def test_resume_keeps_rows_up_to_its_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(ROWS)
    assert _open(tmp_path, start_step=2) == ([0, 1, 2], [])  # nothing to drop: the file is left alone
    assert _open(tmp_path, start_step=1) == ([0, 1], [ROWS])


def test_a_fresh_start_keeps_no_row_of_the_earlier_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(ROWS)
    assert _open(tmp_path, start_step=0) == ([], [ROWS])


def test_a_bad_line_before_the_last_names_file_and_line(tmp_path):
    bad = b'{"step": 0}\n{"step": 1, "reward\n{"step": 2}\n'
    (tmp_path / "metrics.jsonl").write_bytes(bad)
    with pytest.raises(UserError, match=rf"{tmp_path}/metrics\.jsonl:2: not a metrics row"):
        MetricsLogger(tmp_path, total_steps=5, tensorboard=False, progress_bar=False, start_step=1)
    assert (tmp_path / "metrics.jsonl").read_bytes() == bad
