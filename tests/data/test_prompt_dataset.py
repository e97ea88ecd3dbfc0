"""Prompt datasets: rendering (plain or chat template), token ids, length filtering, metadata."""

import copy
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from spro_mcore.assets import TINY_BASE_DIR
from spro_mcore.data import DataError, load_prompt_dataset

pytestmark = pytest.mark.unit

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_BASE_DIR)


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHATML
    return tok


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plain_prompts_without_chat_template(tmp_path, tokenizer):
    assert tokenizer.chat_template is None  # the tiny base is fed plain prompts
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q: 3+4*2-5=\n", "answer": "6", "num_steps": 3}])
    ds = load_prompt_dataset(path, tokenizer)
    item = ds[0]
    assert item.text == "Q: 3+4*2-5=\n" and item.answer == "6" and item.metadata == {"num_steps": 3}
    assert item.input_ids == tokenizer("Q: 3+4*2-5=\n")["input_ids"]
    assert tokenizer.decode(item.input_ids) == "Q: 3+4*2-5=\n"
    assert ds.num_rows == 1 and ds.num_dropped == 0 and item.source == f"{path}:1"


def test_chat_template_renders_messages_and_prompts(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "answer": "4"},
        {"prompt": "3+3?", "answer": "6"},
    ])
    ds = load_prompt_dataset(path, chat_tokenizer)
    expected = [
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n",  # a plain prompt becomes a user turn
    ]
    assert [it.text for it in ds] == expected
    assert [it.input_ids for it in ds] == [chat_tokenizer(t, add_special_tokens=False)["input_ids"] for t in expected]


def test_chat_template_can_be_disabled_or_required(tmp_path, tokenizer, chat_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: 1+2=\n", "answer": "3"}])
    assert load_prompt_dataset(path, chat_tokenizer, chat_template=False)[0].text == "Q: 1+2=\n"
    with pytest.raises(DataError, match="has no chat template"):
        load_prompt_dataset(path, tokenizer, chat_template=True)
    msgs = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"}], "answer": "3"}])
    with pytest.raises(DataError, match=r"m.jsonl:1: chat messages given, but the tokenizer has no chat template"):
        load_prompt_dataset(msgs, tokenizer)


def test_length_filter_reports_the_dropped_count(tmp_path, tokenizer, caplog):
    prompts = [f"Q: {'1+' * k}1=\n" for k in range(1, 21)]
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    limit = sorted(lengths)[12]
    expect_kept = [p for p, n in zip(prompts, lengths) if n <= limit]
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "answer": "0"} for p in prompts])
    with caplog.at_level(logging.WARNING):
        ds = load_prompt_dataset(path, tokenizer, max_prompt_length=limit)
    assert [it.text for it in ds] == expect_kept
    assert ds.num_dropped == len(prompts) - len(expect_kept) > 0 and ds.num_rows == len(prompts)
    assert f"dropped {ds.num_dropped} of 20 rows" in caplog.text
    with pytest.raises(DataError, match="all 20 prompts are longer than max_prompt_length=2"):
        load_prompt_dataset(path, tokenizer, max_prompt_length=2)


def test_parquet_with_custom_field_names(tmp_path, tokenizer):
    data = [{"question": f"Q: {i}+1=\n", "gt": i + 1, "id": i} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(data), tmp_path / "d.parquet")
    ds = load_prompt_dataset(tmp_path / "d.parquet", tokenizer, prompt_key="question", answer_key="gt")
    assert [(it.text, it.answer, it.metadata) for it in ds] == [(d["question"], str(d["gt"]), {"id": d["id"]}) for d in data]
    with pytest.raises(DataError, match=r"d.parquet:1: missing field 'answer'"):
        load_prompt_dataset(tmp_path / "d.parquet", tokenizer, prompt_key="question")
