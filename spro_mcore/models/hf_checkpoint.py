"""Reading and writing HF safetensors checkpoints (single file or sharded with an index), with clear errors."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from typing import Iterable

import torch

from spro_mcore.errors import UserError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# files of an HF model directory that are not weights (copied from the template by the exporter)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")


class CheckpointError(UserError, ValueError):
    """A missing, incomplete or corrupt checkpoint."""


class HFSafetensorsReader:
    """Lazy access to the tensors of an HF directory: only the tensors asked for are read."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        self.dir = hf_dir
        if not os.path.isdir(hf_dir):
            raise CheckpointError(f"HF model directory {hf_dir!r} does not exist")
        index = os.path.join(hf_dir, INDEX)
        if os.path.isfile(index):
            with open(index) as f:
                self.weight_map = json.load(f)["weight_map"]
        elif os.path.isfile(os.path.join(hf_dir, SINGLE)):
            self.weight_map = None
        else:
            raise CheckpointError(f"{hf_dir!r} has no {SINGLE} or {INDEX} (only safetensors checkpoints are read)")
        self._stack = ExitStack()
        self._files = {}
        self._open = lambda path: self._stack.enter_context(safe_open(path, framework="pt", device="cpu"))
        if self.weight_map is None:
            self.weight_map = {k: SINGLE for k in self._file(SINGLE).keys()}

    def _file(self, name: str):
        if name not in self._files:
            path = os.path.join(self.dir, name)
            try:
                self._files[name] = self._open(path)
            except Exception as e:  # SafetensorError / OSError: a truncated or corrupt file
                raise CheckpointError(f"cannot read safetensors file {path!r}: {e}") from None
        return self._files[name]

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise CheckpointError(f"HF checkpoint {self.dir!r} has no tensor {name!r}")
        try:
            return self._file(self.weight_map[name]).get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {name!r} from {self.dir!r}: {e}") from None

    def dtype(self) -> torch.dtype:
        """The dtype of the stored embedding (the checkpoint's weight dtype)."""
        return self.get("model.embed_tokens.weight").dtype

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_hf_safetensors(named_tensors: Iterable[tuple[str, torch.Tensor]], out_dir: str,
                         max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Write tensors as HF safetensors shards (+ index when more than one). Returns the file names."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in named_tensors:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous().clone()  # views into a shared bucket buffer: own them
        size += nbytes
    if len(shards) == 1:
        names = [SINGLE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for k, t in shard.items():
            weight_map[k] = fname
            total += t.numel() * t.element_size()
    if len(shards) > 1:
        with open(os.path.join(out_dir, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names


def copy_non_weight_files(template_dir: str, out_dir: str) -> list[str]:
    """Copy config, tokenizer, generation config, chat template... (everything but weights) from an HF dir."""
    if not os.path.isdir(template_dir):
        raise CheckpointError(f"HF template directory {template_dir!r} does not exist")
    os.makedirs(out_dir, exist_ok=True)
    copied = []
    for name in sorted(os.listdir(template_dir)):
        src = os.path.join(template_dir, name)
        if not os.path.isfile(src) or name.endswith(_WEIGHT_SUFFIXES) or name.endswith(".index.json"):
            continue
        shutil.copy2(src, os.path.join(out_dir, name))
        copied.append(name)
    return copied
