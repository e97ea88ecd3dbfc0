"""Prompt iteration: per-epoch shuffles from a seed, and resume equal to an uninterrupted run."""

import json

import pytest

from spro_mcore.data import DataError, PromptIterator, epoch_order
from spro_mcore.data.prompt_dataset import PromptDataset, PromptItem

pytestmark = pytest.mark.unit


def make_dataset(n: int) -> PromptDataset:
    items = [PromptItem(input_ids=[i, i + 1], text=f"p{i}", answer=str(i), metadata={"i": i}) for i in range(n)]
    return PromptDataset(items=items, num_rows=n, num_dropped=0, path="mem")


def take(it, k):
    return [next(it) for _ in range(k)]


def test_every_epoch_is_a_fresh_permutation_fixed_by_the_seed():
    ds = make_dataset(12)
    batches = take(PromptIterator(ds, batch_size=4, seed=5), 9)  # 3 epochs
    again = take(PromptIterator(ds, batch_size=4, seed=5), 9)
    other = take(PromptIterator(ds, batch_size=4, seed=6), 9)
    idx = [b.indices for b in batches]
    assert idx == [b.indices for b in again] and idx != [b.indices for b in other]
    epochs = [sum(idx[3 * e : 3 * e + 3], []) for e in range(3)]
    assert all(sorted(e) == list(range(12)) for e in epochs)  # each item once per epoch
    assert epochs[0] != epochs[1] != epochs[2]
    assert [b.epoch for b in batches] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert epochs[1] == epoch_order(12, 5, 1).tolist()
    b = batches[0]
    assert b.answers == [str(i) for i in b.indices] and b.input_ids[0] == [b.indices[0], b.indices[0] + 1]
    assert b.metadata == [{"i": i} for i in b.indices] and b.texts == [f"p{i}" for i in b.indices]


def test_no_shuffle_keeps_file_order():
    it = PromptIterator(make_dataset(6), batch_size=3, shuffle=False)
    assert [b.indices for b in take(it, 3)] == [[0, 1, 2], [3, 4, 5], [0, 1, 2]]


@pytest.mark.parametrize("drop_last", [True, False])
def test_last_short_batch(drop_last):
    it = PromptIterator(make_dataset(10), batch_size=4, seed=0, drop_last=drop_last)
    sizes = [len(b) for b in take(it, 6)]
    assert sizes == ([4, 4, 4, 4, 4, 4] if drop_last else [4, 4, 2, 4, 4, 2])


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7])  # 10 items / 4: cuts inside an epoch and on its boundaries
def test_resume_continues_exactly(drop_last, cut):
    ds = make_dataset(10)
    uninterrupted = [b.indices for b in take(PromptIterator(ds, 4, seed=3, drop_last=drop_last), 12)]

    first = PromptIterator(ds, 4, seed=3, drop_last=drop_last)
    before = [b.indices for b in take(first, cut)]
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    resumed = PromptIterator(ds, 4, seed=3, drop_last=drop_last)
    resumed.load_state_dict(state)
    after = [b.indices for b in take(resumed, 12 - cut)]
    assert before + after == uninterrupted


def test_resume_refuses_changed_data_or_seed():
    it = PromptIterator(make_dataset(10), 4, seed=3)
    next(it)
    state = it.state_dict()
    with pytest.raises(DataError, match="num_items=10 but this run has 9"):
        PromptIterator(make_dataset(9), 4, seed=3).load_state_dict(state)
    with pytest.raises(DataError, match="seed=3 but this run has 4"):
        PromptIterator(make_dataset(10), 4, seed=4).load_state_dict(state)


def test_batch_larger_than_dataset_is_an_error():
    with pytest.raises(DataError, match="batch_size=8 is larger than the 5 prompts"):
        PromptIterator(make_dataset(5), batch_size=8)
