"""A prompt dataset: rows read from JSONL/Parquet, rendered (chat template or plain), tokenized, length-filtered."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spro_mcore.data.length_filter import filter_by_length
from spro_mcore.data.render import render_prompt, tokenize_prompts, uses_chat_template
from spro_mcore.data.rows import DataError, read_prompt_rows

logger = logging.getLogger(__name__)


@dataclass
class PromptItem:
    input_ids: list[int]  # the prompt's token ids, as fed to the engine
    text: str  # the rendered prompt text
    answer: str  # ground truth for the reward function
    metadata: dict[str, Any] = field(default_factory=dict)  # the row's other fields (passed to the reward fn)
    source: str = ""  # "file:row"


@dataclass
class PromptDataset:
    items: list[PromptItem]
    num_rows: int  # rows in the file
    num_dropped: int  # rows dropped for a prompt longer than max_prompt_length
    path: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> PromptItem:
        return self.items[i]


def load_prompt_dataset(
    path: str | Path,
    tokenizer,
    *,
    prompt_key: str | None = "prompt",
    messages_key: str | None = "messages",
    answer_key: str = "answer",
    max_prompt_length: int | None = None,
    chat_template: bool | None = None,
) -> PromptDataset:
    """Read, render and tokenize every row of ``path``; drop (and count) prompts over ``max_prompt_length`` tokens.

    ``chat_template``: None uses the tokenizer's chat template when it has one, True requires it, False
    feeds plain prompts. A malformed row raises :class:`DataError` naming the file, row and field.
    """
    rows = read_prompt_rows(path, prompt_key=prompt_key, messages_key=messages_key, answer_key=answer_key)
    use_template = uses_chat_template(tokenizer, chat_template)
    texts = [render_prompt(r, tokenizer, use_template) for r in rows]
    ids = tokenize_prompts(texts, tokenizer, use_template)
    items = [
        PromptItem(input_ids=i, text=t, answer=r.answer, metadata=r.metadata, source=r.source)
        for r, t, i in zip(rows, texts, ids)
    ]
    kept, dropped = filter_by_length(items, [len(i) for i in ids], max_prompt_length)
    if dropped:
        logger.warning("%s: dropped %d of %d rows with prompts over %d tokens", path, dropped, len(items), max_prompt_length)
    if not kept:
        raise DataError(f"{path}: all {len(items)} prompts are longer than max_prompt_length={max_prompt_length} tokens")
    return PromptDataset(items=kept, num_rows=len(items), num_dropped=dropped, path=str(path))
