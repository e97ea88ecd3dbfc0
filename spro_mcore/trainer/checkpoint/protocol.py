"""The collective steps of the checkpoint protocol (`files`), shared by every job that checkpoints a Megatron
training state (the RL trainer's `Checkpointer`, `pav train`'s verifier checkpoints): which checkpoint to
resume from, whether it is intact on every rank, where a new one is staged, and its commit. What goes inside
a checkpoint is the caller's. Every function is collective: all ranks call it at the same point.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from spro_mcore.models.hf_checkpoint import CheckpointError
from spro_mcore.parallel import collectives
from spro_mcore.parallel.distributed import Layout
from spro_mcore.trainer.checkpoint import files

log = logging.getLogger(__name__)


def candidates(root: Path, resume: str, layout: Layout) -> tuple[list[Path], bool]:
    """(checkpoints to try in order, explicit) for checkpoint.resume = auto | never | a path; decided on
    rank 0 and shared with every rank."""
    box: list[Any] = [None]
    if layout.is_main:
        try:
            if resume == "never":
                box[0] = ([], False)
            elif resume == "auto":
                box[0] = (files.complete_checkpoints(root), False)
            else:
                p = Path(resume)
                if files.step_of(p) is not None or (p / files.MANIFEST).is_file():
                    box[0] = ([p], True)
                elif p.is_dir() and (files.complete_checkpoints(p) or files.incomplete_checkpoints(p)):
                    box[0] = (files.complete_checkpoints(p), False)
                else:
                    box[0] = CheckpointError(f"checkpoint.resume={resume}: {p} is neither a checkpoint "
                                             "(step_<N>) nor a directory of checkpoints")
        except OSError as e:
            box[0] = CheckpointError(f"cannot read checkpoint directory {root}: {e}")
    found = collectives.broadcast_object(box[0])
    if isinstance(found, Exception):
        raise found
    return found


def problem_with(ckpt: Path, layout: Layout) -> Optional[str]:
    """None when `ckpt` is complete and intact (each rank checksums its share of the files), else the problem."""
    try:
        files.verify(ckpt, (layout.rank, layout.world_size))
        problem = None
    except CheckpointError as e:
        problem = str(e)
    return next((p for p in collectives.all_gather_object(problem) if p), None)


def choose(root: Path, resume: str, layout: Layout) -> Optional[Path]:
    """The checkpoint to resume from (collective): the newest intact one for checkpoint.resume=auto, falling
    back past damaged ones with a warning; the named one, or an error, for an explicit path; None for a fresh
    start. Damaged checkpoints are never deleted here."""
    found, explicit = candidates(root, resume, layout)
    problems = []
    for ckpt in found:
        problem = problem_with(ckpt, layout)
        if problem is None:
            return ckpt
        problems.append(problem)
        if explicit:
            raise CheckpointError(f"checkpoint.resume={resume}: {problem}")
        if layout.is_main:
            log.warning("%s; falling back to the previous complete checkpoint", problem)
    if problems:
        raise CheckpointError(
            f"no usable checkpoint in {root} ({'; '.join(problems)}); they are kept as they are: "
            "set checkpoint.resume=never to start over, or point checkpoint.resume at another checkpoint")
    return None


def set_aside_newer_than(root: Path, step: int, resumed_from: Optional[Path], layout: Layout) -> None:
    """Checkpoints past the resume point belong to an abandoned attempt (found bad, or the user resumed
    from an older one): rename them away so that they never mix with this run's. Never deleted."""
    if layout.is_main and root.is_dir():
        for p in files.complete_checkpoints(root) + files.incomplete_checkpoints(root):
            if files.step_of(p) > step and (resumed_from is None or p.resolve() != resumed_from.resolve()):
                aside = p.with_name(f"{p.name}.abandoned-{time.time_ns()}")
                os.replace(p, aside)
                log.warning("kept %s aside as %s: this run continues from step %d", p, aside.name, step)
        if resumed_from is not None and resumed_from.parent.resolve() == root.resolve():
            files.write_latest(root, resumed_from)
        elif (root / files.LATEST).exists() and not files.complete_checkpoints(root):
            (root / files.LATEST).unlink()
    collectives.barrier()


def stage(root: Path, step: int, layout: Layout) -> Path:
    """A fresh `step_<N>.partial-*` directory, the same on every rank, for the checkpoint's files."""
    partial = root / collectives.broadcast_object(files.new_partial_name(step))
    if layout.is_main:
        partial.mkdir(parents=True)
    collectives.barrier()
    return partial


def commit(root: Path, step: int, partial: Path, layout: Layout, keep_last: int, start: float) -> Path:
    """Once every rank's files are written: manifest (checksums computed in parallel over the ranks), rename
    into place, move `latest`, prune beyond `keep_last`. Returns the final path."""
    collectives.barrier()
    names = collectives.broadcast_object(files.list_files(partial) if layout.is_main else None)
    mine = {rel: files.file_digest(partial / rel, fsync=True) for rel in names[layout.rank::layout.world_size]}
    digests = collectives.all_gather_object(mine)
    final = root / files.step_name(step)
    if layout.is_main:
        all_digests = {k: v for d in digests for k, v in d.items()}
        files.write_manifest(partial, all_digests, {"step": step, "time": time.time()})
        kept = files.commit(partial, final)
        if kept is not None:
            log.warning("kept the earlier %s aside as %s", final, kept.name)
        files.check_sizes(final, files.read_manifest(final))  # verified before `latest` moves
        files.write_latest(root, final)
        for p in files.prune(root, keep_last, protect=final):
            log.info("removed old checkpoint %s", p)
        log.info("saved checkpoint %s (%.1fs)", final, time.perf_counter() - start)
    collectives.barrier()
    return final
