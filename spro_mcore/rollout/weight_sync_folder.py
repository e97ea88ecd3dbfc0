"""Folder transport: write weight buckets as a sharded safetensors checkpoint an engine server can load.

One shard per bucket, the HF index file (`model.safetensors.index.json`) and the non-weight files of the
base checkpoint (config, tokenizer), so the folder is a complete HF checkpoint: vLLM's `reload_weights`
(weights_path), SGLang's `/update_weights_from_disk` and `from_pretrained` all read it. Use /dev/shm on
one machine, a shared filesystem across machines.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors.torch import save_file

INDEX_NAME = "model.safetensors.index.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def read_index(folder: str | os.PathLike) -> Optional[dict]:
    """The folder's HF index file, parsed (None: the folder has none)."""
    try:
        return json.loads((Path(folder) / INDEX_NAME).read_text())
    except FileNotFoundError:
        return None


def default_sync_dir(tag: str) -> Path:
    """A per-process folder in /dev/shm (RAM) when it exists, else in the temp directory."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else Path(
        os.environ.get("TMPDIR", "/tmp"))
    return base / f"spro_weight_sync_{tag}_{os.getpid()}"


class SyncDir:
    """Where an engine's folder transport writes: the configured path, or a default one (RAM-backed where
    possible) that `cleanup()` removes, since a model's worth of /dev/shm outlives the process otherwise."""

    def __init__(self, configured: str, tag: str):
        self.owned = not configured
        self.path = Path(configured) if configured else default_sync_dir(tag)

    def cleanup(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def write_safetensors_folder(buckets: Iterable[list[tuple[str, torch.Tensor]]], folder: str | os.PathLike,
                             config_dir: Optional[str | os.PathLike] = None) -> Path:
    """Replace `folder` with the given buckets as `model-0000i-of-0000N.safetensors` shards plus index.

    The new checkpoint is written beside `folder` and moved into place at the end, so a stale shard of an
    earlier, larger sync can never be picked up.
    """
    folder = Path(folder)
    staging = folder.with_name(f"{folder.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    weight_map: dict[str, int] = {}
    total = 0
    n_shards = 0
    for n_shards, bucket in enumerate(buckets, start=1):
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in bucket}
        save_file(tensors, str(staging / f"shard-{n_shards}.safetensors"), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = n_shards
            total += t.numel() * t.element_size()
    if n_shards == 0:
        shutil.rmtree(staging)
        raise ValueError("weight sync: no tensors were given to write")
    names = {i: f"model-{i:05d}-of-{n_shards:05d}.safetensors" for i in range(1, n_shards + 1)}
    for i, name in names.items():
        os.replace(staging / f"shard-{i}.safetensors", staging / name)
    index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
    (staging / INDEX_NAME).write_text(json.dumps(index, indent=1))
    return install_folder(staging, folder, config_dir)


def install_folder(staging: Path, folder: Path, config_dir) -> Path:
    """Complete `staging` with the model's non-weight files and put it in `folder`'s place."""
    if config_dir is not None:
        copy_config_files(config_dir, staging)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def copy_config_files(config_dir, dest: Path) -> None:
    """The model folder's non-weight files (config, tokenizer, generation config) into `dest`."""
    for f in Path(config_dir).iterdir():
        if f.is_file() and f.name != INDEX_NAME and not f.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(f, dest / f.name)
