"""Checkpoints of the whole training state, resume, preemption, fault stops and the final HF export.

A checkpoint of step N holds everything a run needs to continue as if it had never stopped: policy weights,
optimizer state (distributed optimizer), LR schedule (one megatron-core dist checkpoint), the data iterator
position, every rank's RNG states and where the reference weights come from. Layout and atomicity rules:
`files`; what is saved (the Megatron part): `state`, `rng`.

The loop's contract:
    restore(parts) -> start step        (build_components, once the policy, prompts and engine exist)
    maybe_save(trainer, step, metrics)  (after every step: periodic save, non-finite stop)
    with on_preemption(trainer): fit()  (SIGTERM/SIGINT -> stop at a step boundary, save, exit 0;
                                         an engine failure -> save, one clear error)
    stop_requested                      (collective; checked by the loop after every step)
    finish(trainer)                     (final checkpoint + HF export)
Every method is collective: all ranks call it at the same point.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from spro_mcore.config.schema import Config
from spro_mcore.errors import UserError
from spro_mcore.models import dist_checkpoint
from spro_mcore.models.hf_checkpoint import CheckpointError
from spro_mcore.parallel.distributed import Layout
from spro_mcore.parallel.rng_state import capture_rng, reseed, restore_rng
from spro_mcore.trainer.checkpoint import files, protocol
from spro_mcore.trainer.checkpoint.preemption import PreemptionFlag, any_rank

log = logging.getLogger(__name__)


@dataclass
class Boundary:
    """The non-Megatron training state right after a step: what a checkpoint of that step records."""

    step: int
    optimizer_steps: Optional[int]  # tells whether the weights moved since (the LR schedule's step count)
    prompts: Any
    rng: dict


class Checkpointer:
    def __init__(self, cfg: Config, layout: Layout):
        self.cfg, self.layout = cfg, layout
        c = cfg.checkpoint
        self.dir = Path(c.dir) if c.dir else Path(cfg.trainer.output_dir) / "checkpoints"
        self.last_saved_step: Optional[int] = None
        self.resumed_from: Optional[Path] = None
        self._flag = PreemptionFlag()
        self._stop = False
        self._async = dist_checkpoint.AsyncSaves()  # saves in flight (checkpoint.async_save)
        self._parts = None
        self._boundary: Optional[Boundary] = None
        self._hf_template: Optional[str] = None
        self._reference: dict = {}
        self._nonfinite_in_row = 0

    # ---- resume --------------------------------------------------------------------------------------
    def restore(self, parts) -> int:
        """Load the checkpoint chosen by checkpoint.resume into `parts`; return the step to continue from."""
        from spro_mcore.trainer.setup import _hf_dir_of

        self._parts = parts
        self._hf_template = os.path.abspath(_hf_dir_of(parts.model_path))
        self._reference = self._reference_source()
        if self.layout.is_main:
            for p in files.remove_stale(self.dir):
                log.info("removed %s (left by an interrupted save)", p)
        ckpt = protocol.choose(self.dir, self.cfg.checkpoint.resume, self.layout)
        step = self._load(ckpt, parts) if ckpt is not None else 0
        self.resumed_from = ckpt
        self._set_aside_newer_than(step)
        if step > 0:
            self._sync_engine(parts)
            self.last_saved_step = step
        self._boundary = self._capture(step)
        return step

    def _load(self, ckpt: Path, parts) -> int:
        try:
            state = torch.load(ckpt / files.TRAINER_STATE, weights_only=False)
        except Exception as e:  # noqa: BLE001 - a verified file that does not unpickle
            raise CheckpointError(f"checkpoint {ckpt}: cannot read {files.TRAINER_STATE} ({e})") from None
        policy = parts.policy
        policy.load_state_dict(dist_checkpoint.load(policy.sharded_state_dict(is_loading=True), str(ckpt)))
        parts.prompts.load_state_dict(state["prompts"])
        if state["layout"] == self._layout_key():
            restore_rng(torch.load(files.rng_file(ckpt, self.layout.rank), weights_only=False))
        else:
            if self.layout.is_main:
                log.warning("checkpoint %s was written with layout %s, this run is %s: model and optimizer are "
                            "resharded; RNG streams are re-seeded (the run no longer repeats an uninterrupted one "
                            "bit for bit)", ckpt, state["layout"], self._layout_key())
            reseed(self.cfg.trainer.seed, state["step"])
        self._restore_reference(state["reference"], policy)
        if self.layout.is_main:
            log.info("resumed from %s (step %d)", ckpt, state["step"])
        return int(state["step"])

    def _set_aside_newer_than(self, step: int) -> None:
        protocol.set_aside_newer_than(self.dir, step, self.resumed_from, self.layout)

    def _sync_engine(self, parts) -> None:
        """The engine still serves the initial weights: give it the restored policy (export is collective)."""
        tensors = parts.policy.export_weights(dtype=getattr(torch, self.cfg.rollout.dtype))
        if parts.engine is not None:
            parts.engine.update_weights(tensors)
        else:
            for _ in tensors:
                pass

    def _reference_source(self) -> dict:
        from spro_mcore.trainer.setup import resolve_model_path

        m = self.cfg.model
        path = resolve_model_path(m.reference_path, "model.reference_path") if m.reference_path else self._parts.model_path
        return {"mode": m.reference_mode, "path": os.path.abspath(path)}

    def _restore_reference(self, saved: dict, policy) -> None:
        """The reference must stay the one the run started with, even if model.path now names another model
        (e.g. a resumed run pointed at a checkpoint)."""
        if saved["path"] == self._reference["path"]:
            return
        if not os.path.isdir(saved["path"]):
            if self.layout.is_main:
                log.warning("the run's reference weights came from %s, which no longer exists; using %s",
                            saved["path"], self._reference["path"])
            return
        if self.layout.is_main:
            log.warning("reference weights: the run started with %s (config now says %s); reloading them from %s",
                        saved["path"], self._reference["path"], saved["path"])
        policy.load_reference(saved["path"])
        self._reference = dict(saved)

    # ---- saving --------------------------------------------------------------------------------------
    def maybe_save(self, trainer, step: int, metrics: Optional[dict] = None) -> None:
        """After every step: periodic checkpoint, and the stop after too many non-finite updates in a row."""
        self._finalize_async(blocking=False)
        self._boundary = self._capture(step, trainer)
        problem = self._nonfinite_problem(metrics)
        if problem is not None:
            path = self._save(self._boundary)
            self._finalize_async(blocking=True)
            raise UserError(f"{problem}; the training state is saved in {path}: lower optim.lr or check the "
                            "data, then rerun to resume")
        interval = self.cfg.checkpoint.interval
        if interval and step % interval == 0:
            self._save(self._boundary)

    def _capture(self, step: int, trainer=None) -> Boundary:
        # the trainer's data state: async modes drew the prompts of steps not trained yet, drawn again on resume
        prompts = trainer.data_state(step) if trainer is not None else copy.deepcopy(self._parts.prompts.state_dict())
        return Boundary(step=step, optimizer_steps=self._parts.policy.optimizer_steps, prompts=prompts,
                        rng=capture_rng())

    def _save(self, b: Boundary) -> Path:
        """Write checkpoint `b.step` (collective); with async_save the Megatron files are written in the
        background and the checkpoint is committed when that finishes. Returns its final path."""
        from spro_mcore.models.mcore_checkpoint import METADATA

        self._finalize_async(blocking=True)  # one save in flight at a time
        partial = protocol.stage(self.dir, b.step, self.layout)
        start = time.perf_counter()
        request = dist_checkpoint.save(self._parts.policy.sharded_state_dict(), str(partial),
                                       async_save=self.cfg.checkpoint.async_save)
        (partial / files.RNG_DIR).mkdir(exist_ok=True)
        torch.save(b.rng, files.rng_file(partial, self.layout.rank))
        if self.layout.is_main:
            torch.save(self._trainer_state(b), partial / files.TRAINER_STATE)
            (partial / METADATA).write_text(json.dumps(self._model_metadata(), indent=2))
        final = self.dir / files.step_name(b.step)
        if request is None:
            self._commit(b.step, partial, start)
        else:
            self._async.schedule(request, lambda: self._commit(b.step, partial, start))
        return final

    def _commit(self, step: int, partial: Path, start: float) -> None:
        """Collective, once every rank's files are written: manifest (checksums computed in parallel over the
        ranks), rename into place, move `latest`, prune."""
        protocol.commit(self.dir, step, partial, self.layout, self.cfg.checkpoint.keep_last, start)
        self.last_saved_step = step

    def _finalize_async(self, blocking: bool) -> None:
        self._async.finalize(blocking)

    def _trainer_state(self, b: Boundary) -> dict:
        return {"format": 1, "step": b.step, "prompts": b.prompts, "reference": self._reference,
                "layout": self._layout_key(), "seed": self.cfg.trainer.seed, "time": time.time()}

    def _layout_key(self) -> dict:
        lay = self.layout
        return {"world_size": lay.world_size, "tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "cp": lay.cp,
                "vpp": self.cfg.parallel.vpp}

    def _model_metadata(self) -> dict:
        """As `models.mcore_checkpoint` writes it: the checkpoint doubles as a model checkpoint."""
        return {**self._parts.policy.model_metadata(), "hf_template": self._hf_template,
                "saved_with": {"tp": self.layout.tp, "pp": self.layout.pp}}

    # ---- non-finite updates --------------------------------------------------------------------------
    def _nonfinite_problem(self, metrics: Optional[dict]) -> Optional[str]:
        """Skipped (non-finite) updates are counted in a row across steps whose every update was skipped."""
        if not metrics or "train/skipped_updates" not in metrics:
            return None
        t = self.cfg.trainer
        self._nonfinite_in_row = nonfinite_in_row(self._nonfinite_in_row, int(round(float(metrics["train/skipped_updates"]))),
                                                  t.mini_batches * t.ppo_epochs)
        limit = self.cfg.optim.max_nonfinite_in_row
        if limit > 0 and self._nonfinite_in_row >= limit:
            return (f"{self._nonfinite_in_row} updates in a row had a non-finite loss or gradient and were skipped "
                    f"(optim.max_nonfinite_in_row={limit})")
        return None

    # ---- preemption and faults -----------------------------------------------------------------------
    def on_preemption(self, trainer) -> "_PreemptionScope":
        return _PreemptionScope(self, trainer)

    @property
    def stop_requested(self) -> bool:
        """Collective: True on every rank once any rank got SIGTERM/SIGINT."""
        self._stop = self._stop or any_rank(self._flag.signum is not None)
        return self._stop

    def save_on_stop(self, trainer) -> Path:
        """Checkpoint the last step boundary (unless it is saved already) and wait for it to be complete."""
        self._finalize_async(blocking=True)  # a pending save may be this very step
        b = self._boundary
        if b is None or b.step != trainer.step_no:
            b = self._capture(trainer.step_no, trainer)
        if self.last_saved_step != b.step:
            self._save(b)
            self._finalize_async(blocking=True)
        return self.dir / files.step_name(b.step)

    def nothing_to_save(self, trainer) -> bool:
        """True when the weights did not move since the run began or resumed: its starting point (the initial
        model, or the checkpoint it resumed from) is all there is, and a fresh optimizer without a single step
        cannot even be saved by megatron-core's distributed optimizer."""
        b = self._boundary
        start = self.last_saved_step if self.last_saved_step is not None else 0
        return (b is not None and trainer.step_no == b.step == start
                and self._parts.policy.optimizer_steps == b.optimizer_steps)

    def save_after_fault(self, trainer) -> Path:
        """After an exception inside a step. If the weights did not move since the last step boundary
        (the failure came before the update), that boundary is saved and the step is redone on resume;
        otherwise the step's update is kept and saved as finished (its metrics row is lost)."""
        b = self._boundary
        unchanged = trainer.step_no == b.step and self._parts.policy.optimizer_steps == b.optimizer_steps
        if not unchanged:
            b = self._capture(max(trainer.step_no, b.step + 1), trainer)
            if self.layout.is_main:
                log.warning("the failure came after step %d's update: saving it as finished", b.step)
        self._boundary = b
        return self.save_on_stop(trainer)

    # ---- the end -------------------------------------------------------------------------------------
    def finish(self, trainer) -> None:
        """Final checkpoint (unless just saved) and, with checkpoint.export_hf, <output_dir>/hf_final."""
        from spro_mcore.trainer.checkpoint.export import export_policy

        self.save_on_stop(trainer)
        if self.cfg.checkpoint.export_hf:
            out = export_policy(self._parts.policy, Path(self.cfg.trainer.output_dir) / "hf_final", self._hf_template)
            if self.layout.is_main:
                log.info("exported the final policy to %s", out)
        self._async.close()


def nonfinite_in_row(before: int, skipped: int, updates_per_step: int) -> int:
    """Skipped updates in a row after a step with `skipped` of its `updates_per_step` updates skipped. A step
    with any applied update ends the streak (its updates' order is not reported, so a partial step counts 0)."""
    return before + skipped if skipped >= updates_per_step else 0


class _PreemptionScope:
    """`with checkpointer.on_preemption(trainer):` around the loop (see the module docstring)."""

    def __init__(self, checkpointer: Checkpointer, trainer):
        self.ckpt, self.trainer = checkpointer, trainer

    def __enter__(self):
        self.ckpt._flag.install()
        return self.ckpt

    def __exit__(self, exc_type, exc, tb):
        from spro_mcore.rollout.engine import EngineError

        ckpt = self.ckpt
        ckpt._flag.uninstall()
        if exc_type is None:
            if ckpt._stop or any_rank(ckpt._flag.signum is not None):
                path = ckpt.save_on_stop(self.trainer)
                if ckpt.layout.is_main:
                    log.warning("stopped at step %d on request; checkpoint %s; rerun the same command to resume",
                                self.trainer.step_no, path)
                raise SystemExit(0)
            return False
        if issubclass(exc_type, EngineError):
            if ckpt.nothing_to_save(self.trainer):
                raise UserError(f"the rollout engine failed before the first update ({exc}); nothing to save "
                                "(no step was taken since the start or the last checkpoint)") from exc
            path = ckpt.save_after_fault(self.trainer)
            raise UserError(f"the rollout engine failed ({exc}); the training state is saved in {path}: "
                            "rerun the same command to resume once the engine works") from exc
        return False

