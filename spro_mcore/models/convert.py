"""Checkpoint conversion: HF safetensors <-> Megatron dist checkpoint, at any TP x PP (run under torchrun with
world size tp * pp; a plain `python` run is a world of one).

    spro-mcore convert hf-to-mcore --hf-dir IN --out-dir OUT [--tp T] [--pp P] [--dtype D]
    spro-mcore convert mcore-to-hf --mcore-dir OUT --hf-template IN --out-dir HF [--tp T] [--pp P]

hf-to-mcore keeps the HF weights' dtype unless --dtype is given, so HF -> Megatron -> HF is bit-exact.
mcore-to-hf loads the checkpoint at the given TP/PP (dist_checkpointing reshards), gathers the full HF
tensors through `export_hf_weights` and writes them on rank 0, with config/tokenizer files copied from the
template.
"""

from __future__ import annotations

import argparse
import os
import sys

from spro_mcore.config.schema import ModelConfig
from spro_mcore.errors import UserError
from spro_mcore.parallel import collectives

_DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def _init(tp: int, pp: int):
    import torch.distributed as dist

    from spro_mcore.parallel import initialize_model_parallel, init_process_group

    init_process_group()
    if dist.get_world_size() % (tp * pp):
        raise UserError(f"world size {dist.get_world_size()} is not a multiple of --tp x --pp = {tp * pp} "
                        f"(run under torchrun --nproc-per-node {tp * pp})")
    return initialize_model_parallel(tp=tp, pp=pp)


def _check_new_dir(out_dir: str) -> None:
    """Conversions write into a new (or empty) folder: never over an existing model."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        what = "is a file" if not os.path.isdir(out_dir) else "is not empty"
        raise UserError(f"--out-dir {out_dir!r} {what}: give a new folder (nothing in it is overwritten)")


def hf_to_mcore(hf_dir: str, out_dir: str, *, tp: int = 1, pp: int = 1, dtype: str | None = None) -> None:
    """Collective: write `out_dir` (a Megatron dist checkpoint + spro_mcore_model.json) from an HF directory."""
    from spro_mcore.models.build import build_model_chunks
    from spro_mcore.models.hf_arch import parse_hf_config
    from spro_mcore.models.hf_checkpoint import HFSafetensorsReader
    from spro_mcore.models.load_hf import load_hf_weights
    from spro_mcore.models.mcore_checkpoint import save_mcore_checkpoint

    arch = parse_hf_config(hf_dir)
    _check_new_dir(out_dir)
    _init(tp, pp)
    if dtype is None:
        with HFSafetensorsReader(hf_dir) as r:
            dtype = _DTYPE_NAMES[str(r.dtype())]
    chunks = build_model_chunks(arch, ModelConfig(dtype=dtype, transformer_impl="local"))
    load_hf_weights(chunks, hf_dir, arch)
    save_mcore_checkpoint(chunks, out_dir)


def mcore_to_hf(mcore_dir: str, hf_template: str, out_dir: str, *, tp: int = 1, pp: int = 1,
                new_dir: bool = True) -> None:
    """Collective: write HF safetensors (+ the template's config/tokenizer files) from a Megatron checkpoint.
    `new_dir=False`: the caller owns `out_dir` (a temporary folder it renames into place)."""
    import torch.distributed as dist

    from spro_mcore.models.build import build_model_chunks
    from spro_mcore.models.export import export_hf_weights
    from spro_mcore.models.hf_arch import parse_hf_config
    from spro_mcore.models.hf_checkpoint import copy_non_weight_files, write_hf_safetensors
    from spro_mcore.models.mcore_checkpoint import load_mcore_checkpoint, read_metadata

    meta = read_metadata(mcore_dir)
    arch = parse_hf_config(meta["hf_config"])
    if not os.path.isdir(hf_template):
        raise UserError(f"--hf-template {hf_template!r} does not exist")
    if new_dir:
        _check_new_dir(out_dir)
    _init(tp, pp)
    chunks = build_model_chunks(arch, ModelConfig(dtype=meta["dtype"], transformer_impl="local"))
    load_mcore_checkpoint(chunks, mcore_dir)
    tensors = export_hf_weights(chunks, arch)
    if dist.get_rank() == 0:
        copy_non_weight_files(hf_template, out_dir)
        write_hf_safetensors(tensors, out_dir)
    else:
        for _ in tensors:  # collective: every rank iterates
            pass
    collectives.barrier()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spro-mcore convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="direction", required=True, metavar="{hf-to-mcore,mcore-to-hf}")
    a = sub.add_parser("hf-to-mcore", help="HF safetensors directory -> Megatron dist checkpoint")
    a.add_argument("--hf-dir", required=True, help="HF model directory (config.json + safetensors)")
    a.add_argument("--out-dir", required=True, help="new (empty) checkpoint directory")
    a.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="checkpoint dtype (default: the HF weights' dtype)")
    b = sub.add_parser("mcore-to-hf", help="Megatron dist checkpoint -> HF safetensors directory")
    b.add_argument("--mcore-dir", required=True, help="checkpoint written by hf-to-mcore (or the trainer)")
    b.add_argument("--hf-template", required=True, help="HF directory whose config/tokenizer files are copied")
    b.add_argument("--out-dir", required=True, help="output HF directory")
    for s in (a, b):
        s.add_argument("--tp", type=int, default=1, help="tensor parallel size (world size = tp x pp)")
        s.add_argument("--pp", type=int, default=1, help="pipeline parallel size")
    return p


def convert_main(argv: list[str]) -> int:
    """Entry point of `spro-mcore convert ...` and tools/convert_*.py. Returns the exit code; bad input raises
    UserError (printed as one line by the CLI)."""
    args = build_parser().parse_args(argv)
    if args.tp < 1 or args.pp < 1:
        raise UserError("--tp and --pp must be >= 1")
    if args.direction == "hf-to-mcore":
        hf_to_mcore(args.hf_dir, args.out_dir, tp=args.tp, pp=args.pp, dtype=args.dtype)
        done = f"wrote Megatron checkpoint {args.out_dir} (tp={args.tp}, pp={args.pp})"
    else:
        mcore_to_hf(args.mcore_dir, args.hf_template, args.out_dir, tp=args.tp, pp=args.pp)
        done = f"wrote HF checkpoint {args.out_dir}"
    if os.environ.get("RANK", "0") == "0":
        print(done)
    return 0


def tool_main(direction: str, argv: list[str] | None = None) -> int:
    """tools/convert_*.py: one direction, one-line errors, process group torn down."""
    from spro_mcore.parallel import destroy

    try:
        return convert_main([direction, *(sys.argv[1:] if argv is None else argv)])
    except UserError as e:
        print(f"convert {direction}: error: {e}", file=sys.stderr)
        return 2
    finally:
        destroy()
