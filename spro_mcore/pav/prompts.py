"""The prompt set of a PAV command: the configured data (data.source) in file order, the first `count` prompts.

The synthetic task (data.synthetic_task) is written to `<folder>/synthetic_<split>.jsonl` (deterministic from
trainer.seed, as in training: `trainer/prompts.py`) and read back like any user file, so the prompts are
exactly the trainer's.
"""

from __future__ import annotations

from pathlib import Path

from spro_mcore.config.schema import Config
from spro_mcore.data import PromptItem
from spro_mcore.data.splits import load_split, split_path, split_source
from spro_mcore.errors import UserError


def _source(cfg: Config, split: str) -> tuple[str | None, int]:
    path, size = split_source(cfg, split)
    if path == "":
        key = "train_path" if split == "train" else "eval_path"
        raise UserError(f"data.source=file: set data.{key} for the {split} prompts")
    return path, size


def prompt_set_id(cfg: Config, split: str) -> str:
    """What names the prompt set in manifests: the file's absolute path, or the synthetic split's recipe."""
    path, size = _source(cfg, split)
    if path is not None:
        return str(Path(path).resolve())
    # the quickstart task keeps the id collections were made with before tasks had names
    task = "" if cfg.data.synthetic_task == "arithmetic" else f"{cfg.data.synthetic_task}:"
    return f"synthetic:{task}{split}:{size}:seed={cfg.trainer.seed}"


def load_prompt_set(cfg: Config, tokenizer, folder: str | Path, *, split: str, count: int) -> list[PromptItem]:
    """The first `count` prompts of the split (train | test); the synthetic task is written under `folder`."""
    _source(cfg, split)  # a missing file is named before anything is written
    path = split_path(cfg, split, folder)
    dataset = load_split(cfg, tokenizer, path)
    if count > len(dataset):
        raise UserError(f"{count} prompts asked for, but the prompt set {path} has {len(dataset)} usable prompts")
    return list(dataset.items[:count])
