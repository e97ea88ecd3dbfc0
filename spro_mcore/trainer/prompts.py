"""The prompts of each step, as the loop sees them: this replica's slice of the step's global batch.

Every rank iterates the same global order (deterministic from trainer.seed); data-parallel replica r takes
the r-th contiguous slice, so groups never straddle replicas. The synthetic task is written to JSONL under
<output_dir>/data once (rank 0) and read back like any user dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from spro_mcore.config.schema import Config
from spro_mcore.data import PromptItem, PromptIterator
from spro_mcore.data.splits import load_split, split_path
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


def build_prompt_sources(cfg: Config, tokenizer, layout: Layout) -> tuple[PromptSource, list[PromptItem]]:
    d = cfg.data
    folder = Path(cfg.trainer.output_dir) / "data"
    train_path, eval_path = (split_path(cfg, split, folder, write=layout.is_main) for split in ("train", "test"))
    if dist.is_initialized():  # the main rank wrote the synthetic splits
        collectives.barrier()
    train = load_split(cfg, tokenizer, train_path)
    iterator = PromptIterator(train, d.prompts_per_step, seed=cfg.trainer.seed, shuffle=d.shuffle)
    eval_items = list(load_split(cfg, tokenizer, eval_path).items) if eval_path else []
    return PromptSource(iterator, d.prompts_per_step), eval_items
