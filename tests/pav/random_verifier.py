"""A PAV verifier directory for plumbing tests, built the cheap way: the shipped tiny base as the body and a
random value head, in the exact layout `pav/verifier.py`'s export writes (HF body, value_head.safetensors,
pav_verifier.json naming the base policy's fingerprint and the splitter). No training: the predictions are
meaningless but deterministic, which is all the trainer's plumbing, parallel and resume tests need."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TINY = Path(__file__).resolve().parents[2] / "spro_mcore" / "assets" / "tiny_base"


def make_random_verifier(out: Path, *, base: Path = TINY, splitter: str = "\\n", seed: int = 0,
                         fingerprint: str | None = None) -> Path:
    from safetensors.torch import save_file

    from spro_mcore.pav.dataset import policy_fingerprint
    from spro_mcore.pav.verifier import HEAD_FILE, VERIFIER_CONFIG

    shutil.copytree(base, out)
    hidden = json.loads((base / "config.json").read_text())["hidden_size"]
    g = torch.Generator().manual_seed(seed)
    save_file({"value_head.weight": torch.randn(1, hidden, generator=g) * hidden ** -0.5 * 4,
               "value_head.bias": torch.zeros(1)}, str(out / HEAD_FILE))
    info = {"head": "value", "base_policy": str(base), "splitter": splitter,
            "base_policy_fingerprint": fingerprint or policy_fingerprint(base), "prover": "bok", "prover_k": 4}
    (out / VERIFIER_CONFIG).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out
