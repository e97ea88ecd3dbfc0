"""The on-disk layout of training checkpoints and the rules that keep it consistent when a run is killed.

    <checkpoint.dir>/
      step_12/                    one complete checkpoint (renamed into place after every file was written)
        metadata.json common.pt __*_*.distcp    megatron-core dist checkpoint: model, optimizer, LR schedule
        spro_mcore_model.json     model metadata: the directory also loads as model.path and converts to HF
        trainer_state.pt          step, data iterator position, reference-weights source, layout
        rng/rank_00000.pt ...     per-rank RNG states
        COMPLETE.json             manifest (every file, its size and crc32), written last
      step_14.partial-<id>/       a checkpoint being written: never read, removed at the next start
      latest                      the name of the newest complete, verified checkpoint (replaced atomically)

Invariants: a `step_<N>` directory exists only once its manifest was written; the manifest is written only
after every rank's files are on disk; `latest` moves only after that; old checkpoints are first renamed
away and then deleted, so a kill at any moment leaves every `step_<N>` either complete or detectably bad.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zlib
from pathlib import Path

from spro_mcore.models.hf_checkpoint import CheckpointError

MANIFEST = "COMPLETE.json"
LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"
RNG_DIR = "rng"
_STEP_RE = re.compile(r"^step_(\d+)$")
_CHUNK = 8 << 20


def step_name(step: int) -> str:
    return f"step_{step}"


def step_of(path: str | Path) -> int | None:
    m = _STEP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def rng_file(ckpt: str | Path, rank: int) -> Path:
    return Path(ckpt) / RNG_DIR / f"rank_{rank:05d}.pt"


def new_partial_name(step: int) -> str:
    return f"{step_name(step)}.partial-{os.getpid()}-{time.time_ns()}"


def list_files(ckpt: str | Path) -> list[str]:
    """Every file under `ckpt` (relative paths, sorted), the manifest excluded."""
    root = Path(ckpt)
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), root)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def file_digest(path: str | Path, fsync: bool = False) -> dict:
    """Size and crc32 of one file (optionally flushing it to stable storage: a node may crash next)."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return {"size": size, "crc32": crc}


def write_manifest(ckpt: str | Path, digests: dict[str, dict], info: dict) -> None:
    """The completion marker: written last, through a temporary file, then fsynced with its directory."""
    ckpt = Path(ckpt)
    _atomic_write(ckpt / MANIFEST, json.dumps({"format": 1, **info, "files": digests}, indent=1))


def read_manifest(ckpt: str | Path) -> dict:
    path = Path(ckpt) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt} is incomplete: no {MANIFEST} (it was being written when the run stopped)")
    try:
        manifest = json.loads(path.read_text())
        manifest["files"]  # noqa: B018 - presence check
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: corrupt {MANIFEST} ({e})") from None
    return manifest


def check_sizes(ckpt: str | Path, manifest: dict) -> None:
    """Every file of the manifest present with its recorded size (cheap: no reading)."""
    for rel, d in manifest["files"].items():
        p = Path(ckpt) / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {rel} is missing")
        if p.stat().st_size != d["size"]:
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {rel} has {p.stat().st_size} bytes, "
                                  f"the manifest says {d['size']}")


def check_crc(ckpt: str | Path, manifest: dict, names: list[str]) -> None:
    for rel in names:
        got = file_digest(Path(ckpt) / rel)["crc32"]
        if got != manifest["files"][rel]["crc32"]:
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {rel} does not match its checksum")


def verify(ckpt: str | Path, part: tuple[int, int] = (0, 1)) -> dict:
    """Raise CheckpointError naming `ckpt` and the problem unless it is complete and intact. Sizes of all
    files are checked; checksums of this rank's share `part = (rank, world)` of them. Returns the manifest."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    manifest = read_manifest(ckpt)
    for required in ("metadata.json", TRAINER_STATE):
        if required not in manifest["files"]:
            raise CheckpointError(f"checkpoint {ckpt} is not a spro-mcore training checkpoint (no {required})")
    check_sizes(ckpt, manifest)
    rank, world = part
    check_crc(ckpt, manifest, sorted(manifest["files"])[rank::world])
    return manifest


def complete_checkpoints(root: str | Path) -> list[Path]:
    """`step_<N>` directories with a manifest, newest first (verification is separate)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(step_of(p), p) for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return [p for s, p in sorted(found, key=lambda x: x[0], reverse=True) if (p / MANIFEST).is_file()]


def incomplete_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and step_of(p) is not None and not (p / MANIFEST).is_file())


def read_latest(root: str | Path) -> Path | None:
    p = Path(root) / LATEST
    if not p.is_file():
        return None
    name = p.read_text().strip()
    return Path(root) / name if name else None


def write_latest(root: str | Path, ckpt: str | Path) -> None:
    _atomic_write(Path(root) / LATEST, Path(ckpt).name + "\n")


def commit(partial: str | Path, final: str | Path) -> Path | None:
    """Rename a finished checkpoint into place. An existing directory of that name (a checkpoint of an
    earlier attempt that was found bad, or written past the step a run resumed from) is kept aside, never
    deleted: returns its new path."""
    final = Path(final)
    kept = None
    if final.exists():
        kept = final.with_name(f"{final.name}.superseded-{time.time_ns()}")
        os.replace(final, kept)
    os.replace(partial, final)
    _fsync_dir(final.parent)
    return kept


def prune(root: str | Path, keep_last: int, protect: Path) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep_last` (never `protect`). Each is renamed first,
    so a kill in the middle of the deletion leaves no half-deleted `step_<N>`."""
    removed = []
    for p in complete_checkpoints(root)[keep_last:]:
        if p.resolve() == Path(protect).resolve():
            continue
        doomed = p.with_name(f"{p.name}.deleting-{time.time_ns()}")
        os.replace(p, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(p)
    return removed


def remove_stale(root: str | Path) -> list[Path]:
    """Leftovers of killed runs: partial writes and interrupted deletions (never a step_<N> directory)."""
    root = Path(root)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.is_dir() and (".partial-" in p.name or ".deleting-" in p.name)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".{LATEST}.tmp*"):
        p.unlink(missing_ok=True)
    return stale


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
