"""Per-step metrics: one JSON object per line in <output_dir>/metrics.jsonl, the same scalars in
TensorBoard (and wandb when configured), and a progress bar with step, reward, eval accuracy and ETA.
Only the main rank writes."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def read_metric_rows(path: Path) -> tuple[list[dict], bool]:
    """(rows, torn) of a metrics.jsonl. A last line without its newline that does not parse is what a kill
    during a write leaves (torn=True, the row is not returned); any other bad line is a UserError naming it."""
    from spro_mcore.errors import UserError

    data = path.read_bytes()
    lines = data.split(b"\n")
    rows, torn = [], False
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i == len(lines) and not data.endswith(b"\n"):
                torn = True
                continue
            raise UserError(f"{path}:{i}: not a metrics row ({type(e).__name__}: {str(e)[:80]}); move the file "
                            "away to start a new one") from None
        rows.append(row)
    return rows, torn


class StepTimer:
    """Collects `time/<name>` seconds for one step."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"time/{name}"] = self.times.get(f"time/{name}", 0.0) + time.perf_counter() - start


def _scalar(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v if not (isinstance(v, float) and math.isnan(v)) else None
    return None


class MetricsLogger:
    def __init__(self, output_dir: str | Path, *, total_steps: int, enabled: bool = True, tensorboard: bool = True,
                 wandb_project: str = "", progress_bar: bool = True, start_step: int = 0, run_config: dict | None = None):
        self.enabled = enabled
        self.total_steps = total_steps
        self._tb = self._wandb = self._progress = None
        self._last_eval: float | None = None
        if not enabled:
            return
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # append: a resumed run continues the same file; steps past the resume point are dropped first
        self.path = self.dir / "metrics.jsonl"
        self._truncate_after(start_step)
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"), purge_step=start_step + 1 if start_step else None)
        if wandb_project:
            try:
                import wandb
            except ImportError:
                from spro_mcore.errors import UserError

                raise UserError("logging.wandb_project is set but wandb is not installed (pip install wandb)") from None
            self._wandb = wandb.init(project=wandb_project, config=run_config, dir=str(self.dir))
        if progress_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")
            self._progress.start()

    def _truncate_after(self, step: int) -> None:
        """Rows past the resume point (or a torn last line) belong to an abandoned attempt: the file keeps the
        rows up to `step`, and the whole earlier file is kept aside first (never deleted)."""
        if not self.path.exists():
            return
        rows, torn = read_metric_rows(self.path)
        # a fresh start (step 0) keeps no row: its step-0 evaluation is logged again
        kept = [r for r in rows if r.get("step", 0) <= step] if step else []
        if len(kept) == len(rows) and not torn:
            return
        # in an order that a kill at any point leaves metrics.jsonl whole (the old or the new one)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        aside = self.path.with_name(f"{self.path.name}.abandoned-{time.time_ns()}")
        try:
            os.link(self.path, aside)
        except OSError:  # a file system without hard links
            shutil.copy2(self.path, aside)
        os.replace(tmp, self.path)
        log.warning("kept %s aside as %s (%d rows after step %d%s): this run continues from step %d", self.path,
                    aside.name, len(rows) - len(kept), step, ", a torn last line" if torn else "", step)

    def log(self, step: int, metrics: dict) -> dict:
        row = {"step": step}
        row.update({k: s for k, v in sorted(metrics.items()) if (s := _scalar(v)) is not None})
        if not self.enabled:
            return row
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(row, step=step)
        if "eval/acc" in row:
            self._last_eval = row["eval/acc"]
        if self._progress is not None:
            info = f"reward {row.get('reward/mean', float('nan')):.3f}"
            if self._last_eval is not None:
                info += f"  eval {self._last_eval:.3f}"
            self._progress.update(self._task, completed=step, info=info)
        return row

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._file.close()
