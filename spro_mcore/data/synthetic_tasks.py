"""The built-in synthetic tasks by name (``data.synthetic_task``), and writing one's split as a JSONL dataset.

Both tasks share the text format and so the outcome verifier (``reward_fn=synthetic_arithmetic``): the
final ``A: <integer>`` line is compared with the ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

from spro_mcore.data import synthetic_arithmetic, synthetic_chain

# name -> generate_split(split, n, seed) -> list[Problem]
TASKS = {
    "arithmetic": synthetic_arithmetic.generate_split,  # 2-4 operations: the quickstart task
    "chain": synthetic_chain.generate_split,  # 5-9 operations with parentheses: the harder task
}


def write_task_split_jsonl(path: str | Path, task: str, split: str, n: int, seed: int = 0) -> Path:
    """Write ``n`` problems of ``task``'s ``split`` as a JSONL prompt dataset at ``path``; returns the path."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {sorted(TASKS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in TASKS[task](split, n, seed):
            f.write(json.dumps(synthetic_arithmetic.problem_to_row(p)) + "\n")
    return path
