"""Prompt data: datasets from JSONL/Parquet, rendering, length filtering, resumable iteration, synthetic tasks."""

from spro_mcore.data.prompt_dataset import PromptDataset, PromptItem, load_prompt_dataset
from spro_mcore.data.prompt_iterator import PromptBatch, PromptIterator, epoch_order
from spro_mcore.data.rows import DataError, PromptRow, read_prompt_rows

__all__ = [
    "DataError",
    "PromptBatch",
    "PromptDataset",
    "PromptItem",
    "PromptIterator",
    "PromptRow",
    "epoch_order",
    "load_prompt_dataset",
    "read_prompt_rows",
]
