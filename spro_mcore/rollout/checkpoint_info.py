"""What an engine needs to know about an HF checkpoint directory without loading the model.

EOS ids (engines started without a tokenizer do not know them) and the tensor names the checkpoint holds
(so a weight update that leaves some weight out fails instead of silently keeping old values).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def eos_token_ids(model_path: str) -> list[int]:
    """EOS ids from generation_config.json, else config.json (int or list in either)."""
    root = Path(model_path)
    eos = _read_json(root / "generation_config.json").get("eos_token_id")
    if eos is None:
        eos = _read_json(root / "config.json").get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def tied_embeddings(model_path: str) -> bool:
    cfg = _read_json(Path(model_path) / "config.json")
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))


def tensor_names(model_path: str) -> set[str]:
    """Names of the tensors stored in the checkpoint's safetensors files (empty if it has none)."""
    names: set[str] = set()
    for f in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            names.update(sf.keys())
    return names


def missing_weights(expected: set[str], sent: set[str]) -> list[str]:
    """Checkpoint weights a sync did not send (a tied checkpoint stores no lm_head.weight)."""
    return sorted(expected - sent)
