"""Training checkpoints -> HF directories: any saved checkpoint (offline), and the live policy at the end of
training. Both go through the one HF <-> Megatron mapping (`models.export`) and write through a temporary
directory that is renamed into place, so a killed export never leaves a half-written model behind.

    python -m spro_mcore.trainer.checkpoint.export CHECKPOINT OUT_DIR [--hf-template DIR] [--tp T --pp P]

CHECKPOINT is a `step_<N>` directory or a checkpoint directory (its newest complete checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from spro_mcore.errors import UserError
from spro_mcore.models.hf_checkpoint import CheckpointError
from spro_mcore.parallel import collectives
from spro_mcore.trainer.checkpoint import files


def resolve_checkpoint(path: str | Path) -> Path:
    """A `step_<N>` directory as is; a checkpoint directory -> its newest checkpoint that verifies."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if files.step_of(path) is not None or (path / files.MANIFEST).is_file():
        return path
    problems = []
    for ckpt in files.complete_checkpoints(path):
        try:
            files.verify(ckpt)
            return ckpt
        except CheckpointError as e:
            problems.append(str(e))
    raise CheckpointError(f"{path} holds no complete checkpoint" + (f" ({'; '.join(problems)})" if problems else ""))


def export_checkpoint_to_hf(checkpoint: str | Path, out_dir: str | Path, *, hf_template: str | None = None,
                            tp: int = 1, pp: int = 1) -> Path:
    """Collective over a job of tp*pp ranks (a plain `python` process is a world of one). Returns out_dir."""
    import torch.distributed as dist

    from spro_mcore.models.convert import mcore_to_hf
    from spro_mcore.models.mcore_checkpoint import read_metadata

    ckpt = resolve_checkpoint(checkpoint)
    files.verify(ckpt)
    template = hf_template or read_metadata(str(ckpt)).get("hf_template")
    if not template or not os.path.isdir(template):
        raise UserError(f"{ckpt}: its HF template directory {template!r} (config and tokenizer) is gone; "
                        "pass --hf-template DIR")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output directory {out} is not empty")
    tmp = out.with_name(out.name + ".partial")
    if os.environ.get("RANK", "0") == "0":
        shutil.rmtree(tmp, ignore_errors=True)
    mcore_to_hf(str(ckpt), template, str(tmp), tp=tp, pp=pp, new_dir=False)
    if dist.get_rank() == 0:
        _replace_dir(tmp, out)
    collectives.barrier()
    return out


def export_policy(policy, out_dir: str | Path, hf_template: str) -> Path:
    """Collective: the policy's current weights as an HF directory (safetensors + the template's config and
    tokenizer files), replacing `out_dir`."""
    import torch.distributed as dist

    from spro_mcore.models.hf_checkpoint import copy_non_weight_files, write_hf_safetensors

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    tensors = policy.export_weights()
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        copy_non_weight_files(hf_template, str(tmp))
        write_hf_safetensors(tensors, str(tmp))
        _replace_dir(tmp, out)
    else:
        for _ in tensors:  # collective: every rank iterates
            pass
    collectives.barrier()
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move `tmp` into place; an earlier export there (an earlier run's, or this run's before a resume) is kept
    aside as `<out>.replaced-<ns>`, never deleted."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        aside = out.with_name(f"{out.name}.replaced-{time.time_ns()}")
        os.replace(out, aside)
        logging.getLogger(__name__).warning("kept the earlier %s aside as %s", out, aside.name)
    os.replace(tmp, out)


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spro-mcore export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a step_<N> checkpoint or a checkpoint directory (newest complete one)")
    p.add_argument("out_dir", help="new HF directory")
    p.add_argument("--hf-template", default=None, help="HF directory for config/tokenizer (default: recorded)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size to load at (world = tp x pp)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size to load at")
    args = p.parse_args(argv)
    out = export_checkpoint_to_hf(args.checkpoint, args.out_dir, hf_template=args.hf_template, tp=args.tp, pp=args.pp)
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote HF checkpoint {out}")
    return 0


if __name__ == "__main__":
    try:
        code = export_main()
    except UserError as e:
        print(f"spro-mcore export: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
