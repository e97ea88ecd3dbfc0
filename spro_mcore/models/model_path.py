"""Where `model.path` / `model.reference_path` point: `builtin:<name>` (a model shipped in spro_mcore/assets)
or a folder. No heavy import: start-up checks use it before torch is loaded."""

from __future__ import annotations

from pathlib import Path

from spro_mcore.errors import UserError

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def resolve_model_path(path: str, key: str = "model.path") -> str:
    """The folder `path` names; `key`: the config key that named it, for the error."""
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        resolved = ASSETS / name
        if not resolved.is_dir():
            shipped = sorted(p.name for p in ASSETS.iterdir() if p.is_dir()) if ASSETS.is_dir() else []
            raise UserError(f"{key}={path}: no shipped model {name!r} (shipped: {', '.join(shipped) or 'none'})")
        return str(resolved)
    if not Path(path).is_dir():
        what = "does not exist" if not Path(path).exists() else "is not a directory"
        raise UserError(f"{key}={path!r} {what} (expected an HF model folder or a Megatron checkpoint)")
    return path
