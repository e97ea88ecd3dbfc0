"""The prompt set of a PAV command: the configured data (data.source) in file order, the first `count` prompts.

The synthetic task (data.synthetic_task) is written to `<folder>/synthetic_<split>.jsonl` (deterministic from
trainer.seed, as in training: `trainer/prompts.py`) and read back like any user file, so the prompts are
exactly the trainer's.
"""

from __future__ import annotations

from pathlib import Path

from spro_mcore.config.schema import Config
from spro_mcore.data import PromptItem, load_prompt_dataset
from spro_mcore.data.render import template_setting
from spro_mcore.data.synthetic_tasks import write_task_split_jsonl
from spro_mcore.errors import UserError


def _split(cfg: Config, split: str) -> tuple[str | None, int]:
    """The split's file (data.source=file) or, for the synthetic task, None and the split's size."""
    d = cfg.data
    if d.source == "file":
        key = "train_path" if split == "train" else "eval_path"
        if not getattr(d, key):
            raise UserError(f"data.source=file: set data.{key} for the {split} prompts")
        return getattr(d, key), 0
    return None, d.synthetic_train_size if split == "train" else d.synthetic_eval_size


def prompt_set_id(cfg: Config, split: str) -> str:
    """What names the prompt set in manifests: the file's absolute path, or the synthetic split's recipe."""
    path, size = _split(cfg, split)
    if path is not None:
        return str(Path(path).resolve())
    # the quickstart task keeps the id collections were made with before tasks had names
    task = "" if cfg.data.synthetic_task == "arithmetic" else f"{cfg.data.synthetic_task}:"
    return f"synthetic:{task}{split}:{size}:seed={cfg.trainer.seed}"


def load_prompt_set(cfg: Config, tokenizer, folder: str | Path, *, split: str, count: int) -> list[PromptItem]:
    """The first `count` prompts of the split (train | test); the synthetic task is written under `folder`."""
    d = cfg.data
    path, size = _split(cfg, split)
    if path is None:
        path = Path(folder) / f"synthetic_{split}.jsonl"
        write_task_split_jsonl(path, d.synthetic_task, split, size, seed=cfg.trainer.seed)
    template = template_setting(d.chat_template)
    dataset = load_prompt_dataset(path, tokenizer, prompt_key=d.prompt_key, messages_key=d.messages_key,
                                  answer_key=d.answer_key, max_prompt_length=d.max_prompt_tokens,
                                  chat_template=template)
    if count > len(dataset):
        raise UserError(f"{count} prompts asked for, but the prompt set {path} has {len(dataset)} usable prompts")
    return list(dataset.items[:count])
