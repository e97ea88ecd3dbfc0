"""Folder transport with deltas: the folder stays one complete HF checkpoint, and each sync writes a file per
changed tensor only (`v<version>-<i>.safetensors`), points the index at them and removes files nothing points
to any more. One tensor per file because loaders (vLLM's reload) read every tensor of every indexed file: a
file mixing a superseded tensor with live ones would load the stale copy too. The index's metadata carries
the sync's manifest (`spro_weight_sync`); each file's safetensors header carries the version and digest of
its tensor.

An engine reads the whole folder as before (vLLM's `reload_weights(weights_path=...)` follows the index), so a
version it skipped costs nothing; what must not happen is loading a folder that is not what the trainer wrote.
`verify_delta_folder(folder, version)`, run on the receiving side before the load, refuses a folder at another
version (the write failed or the folder was replaced), an index that lacks or adds a tensor, a tensor written
by this sync whose bytes do not match its digest (re-hashed), and an older shard whose header does not carry
the manifest's digest for its tensors (a stale or swapped file).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spro_mcore.rollout.weight_sync_delta import DeltaError, DeltaSender, Manifest, tensor_digest
from spro_mcore.rollout.weight_sync_folder import INDEX_NAME, install_folder, read_index

META_KEY = "spro_weight_sync"


def folder_version(folder: str | os.PathLike) -> Optional[int]:
    """The sync version a delta folder holds (None: no delta folder there)."""
    index = read_index(Path(folder))
    meta = (index or {}).get("metadata", {}).get(META_KEY)
    return None if meta is None else int(meta["manifest"]["version"])


def write_delta_folder(buckets: Iterable[list[tuple[str, torch.Tensor]]], folder: str | os.PathLike,
                       sender: DeltaSender, config_dir: Optional[str | os.PathLike] = None) -> Path:
    """Write one sync of `sender` (whose `select()` produced `buckets`) into `folder`; the sender is not
    committed here (the caller commits once the engine has loaded the folder)."""
    folder = Path(folder)
    base = sender.base
    if base is None:  # full sync: a fresh folder, moved into place at the end
        target = folder.with_name(f"{folder.name}.staging-{os.getpid()}")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        weight_map: dict[str, str] = {}
        nbytes: dict[str, int] = {}
    else:
        held = folder_version(folder)
        if held != base:
            raise DeltaError(f"weight sync delta: the folder {folder} holds version {held}, the trainer's delta "
                             f"builds on {base}; sync in full")
        target = folder
        index = read_index(folder)
        meta = index["metadata"][META_KEY]
        weight_map, nbytes = dict(index["weight_map"]), dict(meta["nbytes"])
    version = sender.version + 1
    n = 0
    for bucket in buckets:
        for name, t in bucket:  # one file per tensor: a superseded tensor leaves no live copy behind
            n += 1
            t = t.detach().to("cpu").contiguous()
            shard = f"v{version:06d}-{n:05d}.safetensors"
            save_file({name: t}, str(target / shard), metadata={
                "format": "pt", "spro_version": str(version), "spro_digests": json.dumps({name: sender.running[name]})})
            weight_map[name] = shard
            nbytes[name] = t.numel() * t.element_size()
    manifest = sender.manifest()
    for gone in set(weight_map) - set(manifest.digests):  # a tensor the exporter no longer sends
        del weight_map[gone], nbytes[gone]
    if not weight_map:
        raise ValueError("weight sync: no tensors were given to write")
    index = {"metadata": {"total_size": sum(nbytes.values()), META_KEY: {"manifest": json.loads(manifest.to_json()),
                                                                         "nbytes": nbytes}},
             "weight_map": weight_map}
    tmp = target / f"{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index))
    os.replace(tmp, target / INDEX_NAME)  # the switch: readers see the old or the new version, never a mix
    used = set(weight_map.values())
    for f in target.glob("*.safetensors"):
        if f.name not in used:
            f.unlink()
    if base is None:
        return install_folder(target, folder, config_dir)
    return folder


def verify_delta_folder(folder: str | os.PathLike, version: int) -> Manifest:
    """The receiving side's check before loading `folder` as sync `version` (DeltaError names what is wrong)."""
    folder = Path(folder)
    index = read_index(folder)
    meta = (index or {}).get("metadata", {}).get(META_KEY)
    if meta is None:
        raise DeltaError(f"weight sync delta: {folder} has no delta index ({INDEX_NAME} with {META_KEY!r})")
    manifest = Manifest.from_json(json.dumps(meta["manifest"]))
    if manifest.version != version:
        raise DeltaError(f"weight sync delta: {folder} holds version {manifest.version}, the trainer wrote "
                         f"{version}: a missed or partial update; sync in full")
    weight_map = index["weight_map"]
    if set(weight_map) != set(manifest.digests):
        diff = sorted(set(weight_map) ^ set(manifest.digests))
        raise DeltaError(f"weight sync delta: the index of version {version} and its manifest disagree on "
                         f"{len(diff)} tensors (e.g. {diff[:3]})")
    sent = set(manifest.sent)
    by_file: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_file.setdefault(shard, []).append(name)
    for shard, names in by_file.items():
        path = folder / shard
        if not path.is_file():
            raise DeltaError(f"weight sync delta: shard {shard} of version {version} is missing from {folder}")
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            recorded = json.loads(header.get("spro_digests", "{}"))
            for name in names:
                if name in sent:  # written by this sync: the bytes themselves are checked
                    if header.get("spro_version") != str(version) or tensor_digest(f.get_tensor(name)) != \
                            manifest.digests[name]:
                        raise DeltaError(f"weight sync delta: tensor {name!r} in {shard} does not match the "
                                         f"checksum of version {version} (corrupt or altered)")
                elif recorded.get(name) != manifest.digests[name]:
                    raise DeltaError(f"weight sync delta: tensor {name!r} in {shard} is not the one version "
                                     f"{version} builds on (a stale or swapped shard)")
    return manifest
