"""The prompts of each step, as the loop sees them: this replica's slice of the step's global batch.

Every rank iterates the same global order (deterministic from trainer.seed); data-parallel replica r takes
the r-th contiguous slice, so groups never straddle replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spro_mcore.config.schema import Config
from spro_mcore.parallel.distributed import Layout


@dataclass
class PromptItem:
    token_ids: list[int]
    answer: str
    meta: dict = field(default_factory=dict)


class PromptSource:
    def __init__(self, iterator, prompts_per_step: int):
        self.iterator = iterator  # data iterator with next_batch(n), state_dict(), load_state_dict()
        self.prompts_per_step = prompts_per_step

    def next_batch(self, layout: Layout) -> list[PromptItem]:
        rows = self.iterator.next_batch(self.prompts_per_step)
        per = self.prompts_per_step // layout.dp
        return [_item(r) for r in rows[layout.dp_rank * per:(layout.dp_rank + 1) * per]]

    def state_dict(self) -> dict:
        return self.iterator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.iterator.load_state_dict(state)


def _item(row) -> PromptItem:
    return PromptItem(token_ids=list(row.token_ids), answer=str(row.answer), meta=dict(row.meta))


def build_prompt_sources(cfg: Config, tokenizer, layout: Layout) -> tuple[PromptSource, list[PromptItem]]:
    raise NotImplementedError
