"""Read prompt rows from JSONL or Parquet and check each one: a prompt (string) or chat messages, plus an answer.

Every problem is reported as one line naming the file, the row and the field; no row is skipped silently.
Rows are numbered from 1 (the line number in a JSONL file, the row number in a Parquet file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator



class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file, the row and the field."""


@dataclass
class PromptRow:
    source: str  # "file:row", for messages that point back at the data
    answer: str
    prompt: str | None = None  # exactly one of prompt / messages is set
    messages: list[dict[str, str]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the row's other fields, passed to reward functions


def iter_raw_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row dict) for each row of a ``.jsonl``/``.json`` or ``.parquet`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open("rb") as f:
            for lineno, raw_line in enumerate(f, start=1):
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line); save the file "
                                    "as UTF-8") from None
                if not line.strip():
                    continue  # blank lines (e.g. a trailing newline) are not rows
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: a row must be a JSON object, got {type(row).__name__}")
                yield lineno, row
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
    else:
        raise DataError(f"{path}: unknown data format {suffix!r}; use .jsonl or .parquet")


def check_row(
    raw: dict, source: str, prompt_key: str | None = "prompt", messages_key: str | None = "messages",
    answer_key: str = "answer",
) -> PromptRow:
    """Validate one raw row; ``prompt_key`` or ``messages_key`` may be None to use only the other."""
    keys = [k for k in (prompt_key, messages_key) if k is not None]
    if not keys:
        raise ValueError("set prompt_key or messages_key (or both)")
    present = [k for k in keys if raw.get(k) is not None]
    if not present:
        raise DataError(f"{source}: missing field {' or '.join(map(repr, keys))} (fields present: {sorted(raw)})")
    if len(present) > 1:
        raise DataError(
            f"{source}: has both {prompt_key!r} and {messages_key!r}; set prompt_key=None or messages_key=None "
            f"to choose one"
        )
    if raw.get(answer_key) is None:
        raise DataError(f"{source}: missing field {answer_key!r} (fields present: {sorted(raw)})")
    answer = raw[answer_key]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f"{source}: field {answer_key!r} must be a string or a number, got {type(answer).__name__}")
    metadata = {k: v for k, v in raw.items() if k not in (prompt_key, messages_key, answer_key)}
    row = PromptRow(source=source, answer=str(answer), metadata=metadata)

    key = present[0]
    value = raw[key]
    if key == prompt_key:
        if not isinstance(value, str) or not value:
            raise DataError(f"{source}: field {key!r} must be a non-empty string, got {value!r:.80}")
        row.prompt = value
    else:
        if not isinstance(value, list) or not value:
            raise DataError(f"{source}: field {key!r} must be a non-empty list of messages, got {value!r:.80}")
        for j, m in enumerate(value):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f"{source}: field {key!r}[{j}] must be an object with string 'role' and 'content'")
        row.messages = [{"role": m["role"], "content": m["content"]} for m in value]
    return row


def read_prompt_rows(
    path: str | Path, *, prompt_key: str | None = "prompt", messages_key: str | None = "messages",
    answer_key: str = "answer",
) -> list[PromptRow]:
    """All rows of a prompt data file, checked; the first bad row raises :class:`DataError`."""
    rows = [
        check_row(raw, f"{path}:{i}", prompt_key, messages_key, answer_key) for i, raw in iter_raw_rows(path)
    ]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows
