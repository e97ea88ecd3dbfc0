"""Reading prompt rows: JSONL and Parquet, configurable field names, one clear error per malformed row."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spro_mcore.data.rows import DataError, read_prompt_rows

pytestmark = pytest.mark.unit


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_rows_with_metadata(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Q: 1+2=\n", "answer": "3", "level": 1},
        {"messages": [{"role": "user", "content": "hi"}], "answer": 7},
    ])
    rows = read_prompt_rows(path)
    assert rows[0].prompt == "Q: 1+2=\n" and rows[0].answer == "3" and rows[0].metadata == {"level": 1}
    assert rows[1].messages == [{"role": "user", "content": "hi"}] and rows[1].answer == "7"
    assert rows[1].prompt is None and rows[1].source == f"{path}:2"


def test_parquet_rows_equal_jsonl_rows(tmp_path):
    data = [{"question": f"Q: {i}+1=\n", "gt": str(i + 1), "id": i} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(data), tmp_path / "d.parquet")
    write_jsonl(tmp_path / "d.jsonl", data)
    kw = dict(prompt_key="question", messages_key=None, answer_key="gt")
    from_parquet = read_prompt_rows(tmp_path / "d.parquet", **kw)
    from_jsonl = read_prompt_rows(tmp_path / "d.jsonl", **kw)
    assert [(r.prompt, r.answer, r.metadata) for r in from_parquet] == [
        (r.prompt, r.answer, r.metadata) for r in from_jsonl
    ] == [(d["question"], d["gt"], {"id": d["id"]}) for d in data]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q: 1+2=\n"}, r"d.jsonl:3: missing field 'answer'"),
    ({"answer": "3"}, r"d.jsonl:3: missing field 'prompt' or 'messages'"),
    ({"prompt": "", "answer": "3"}, r"d.jsonl:3: field 'prompt' must be a non-empty string"),
    ({"prompt": "x", "messages": [], "answer": "3"}, r"d.jsonl:3: has both 'prompt' and 'messages'"),
    ({"messages": [{"role": "user"}], "answer": "3"}, r"d.jsonl:3: field 'messages'\[0\] must be an object"),
    ({"prompt": "x", "answer": ["3"]}, r"d.jsonl:3: field 'answer' must be a string or a number"),
])
def test_malformed_row_names_file_row_and_field(tmp_path, row, message):
    good = {"prompt": "Q: 1+1=\n", "answer": "2"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")  # a blank line is not a row
    with pytest.raises(DataError, match=message):
        read_prompt_rows(path)


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "answer": "1"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_prompt_rows(tmp_path / "bad.jsonl")
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match=r"unknown data format '.csv'"):
        read_prompt_rows(tmp_path / "d.csv")
    with pytest.raises(DataError, match="no such data file"):
        read_prompt_rows(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        read_prompt_rows(tmp_path / "empty.jsonl")
