"""The prompts of each step, as the loop sees them: this replica's slice of the step's global batch.

Every rank iterates the same global order (deterministic from trainer.seed); data-parallel replica r takes
the r-th contiguous slice, so groups never straddle replicas. The synthetic task is written to JSONL under
<output_dir>/data once (rank 0) and read back like any user dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from spro_mcore.config.schema import Config
from spro_mcore.data import PromptItem, PromptIterator, load_prompt_dataset
from spro_mcore.data.render import template_setting
from spro_mcore.data.synthetic_tasks import write_task_split_jsonl
from spro_mcore.parallel import collectives
from spro_mcore.parallel.distributed import Layout


class PromptSource:
    def __init__(self, iterator: PromptIterator, prompts_per_step: int):
        self.iterator = iterator
        self.prompts_per_step = prompts_per_step

    def next_batch(self, layout: Layout) -> list[PromptItem]:
        batch = next(self.iterator)
        items = [self.iterator.dataset[i] for i in batch.indices]
        per = self.prompts_per_step // layout.dp
        return items[layout.dp_rank * per:(layout.dp_rank + 1) * per]

    def state_dict(self) -> dict:
        return self.iterator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.iterator.load_state_dict(state)


def _data_files(cfg: Config, layout: Layout) -> tuple[str, str]:
    d = cfg.data
    if d.source == "file":
        return d.train_path, d.eval_path
    folder = Path(cfg.trainer.output_dir) / "data"
    train, test = folder / "synthetic_train.jsonl", folder / "synthetic_test.jsonl"
    if layout.is_main:
        write_task_split_jsonl(train, d.synthetic_task, "train", d.synthetic_train_size, seed=cfg.trainer.seed)
        write_task_split_jsonl(test, d.synthetic_task, "test", d.synthetic_eval_size, seed=cfg.trainer.seed)
    if dist.is_initialized():
        collectives.barrier()
    return str(train), str(test)


def build_prompt_sources(cfg: Config, tokenizer, layout: Layout) -> tuple[PromptSource, list[PromptItem]]:
    d = cfg.data
    train_path, eval_path = _data_files(cfg, layout)
    template = template_setting(d.chat_template)

    def load(path):
        return load_prompt_dataset(path, tokenizer, prompt_key=d.prompt_key, messages_key=d.messages_key,
                                   answer_key=d.answer_key, max_prompt_length=d.max_prompt_tokens,
                                   chat_template=template)

    train = load(train_path)
    iterator = PromptIterator(train, d.prompts_per_step, seed=cfg.trainer.seed, shuffle=d.shuffle)
    eval_items = list(load(eval_path).items) if eval_path else []
    return PromptSource(iterator, d.prompts_per_step), eval_items
