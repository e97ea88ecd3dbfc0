"""A run's prompt splits (train | test) from its `data` section: the configured file, or the synthetic task's
split written to `<folder>/synthetic_<split>.jsonl` (deterministic from trainer.seed) and read back like any
user file. The trainer and the PAV commands find and load their prompts here, so they see the same ones."""

from __future__ import annotations

from pathlib import Path

from spro_mcore.config.schema import Config
from spro_mcore.data.prompt_dataset import PromptDataset, load_prompt_dataset
from spro_mcore.data.render import template_setting
from spro_mcore.data.synthetic_tasks import write_task_split_jsonl


def split_source(cfg: Config, split: str) -> tuple[str | None, int]:
    """(the split's configured file, 0) for data.source=file ('' when unset), or (None, the synthetic split's
    size)."""
    d = cfg.data
    if d.source == "file":
        return (d.train_path if split == "train" else d.eval_path) or "", 0
    return None, d.synthetic_train_size if split == "train" else d.synthetic_eval_size


def split_path(cfg: Config, split: str, folder: str | Path, *, write: bool = True) -> str:
    """The split's file: the configured one ('' when unset), or the synthetic split under `folder`, written
    there when `write` (one writer per run: the others wait for it)."""
    path, size = split_source(cfg, split)
    if path is not None:
        return path
    out = Path(folder) / f"synthetic_{split}.jsonl"
    if write:
        write_task_split_jsonl(out, cfg.data.synthetic_task, split, size, seed=cfg.trainer.seed)
    return str(out)


def load_split(cfg: Config, tokenizer, path: str | Path) -> PromptDataset:
    """The prompts of `path`, read with the data section's keys, length limit and chat-template setting."""
    d = cfg.data
    return load_prompt_dataset(path, tokenizer, prompt_key=d.prompt_key, messages_key=d.messages_key,
                               answer_key=d.answer_key, max_prompt_length=d.max_prompt_tokens,
                               chat_template=template_setting(d.chat_template))
