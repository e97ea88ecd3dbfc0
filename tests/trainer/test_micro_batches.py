import random

import pytest

from spro_mcore.trainer.micro_batches import split_even, token_budget_micro_batches

pytestmark = pytest.mark.unit


def test_hand_case():
    # padded sizes: [5,3]->2*5=10 ok; +7 -> 3*7=21 > 12 -> new; [7,2]->14>12 -> new; [2,2,2]->6; +9 -> 36 -> new
    assert token_budget_micro_batches([5, 3, 7, 2, 2, 9], 12) == [[0, 1], [2], [3, 4], [5]]


def test_oversized_sequence_kept_alone():
    assert token_budget_micro_batches([20, 1], 8) == [[0], [1]]


def test_random_invariants():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 40))]
        budget = rng.randint(1, 200)
        mbs = token_budget_micro_batches(lengths, budget)
        assert [i for mb in mbs for i in mb] == list(range(len(lengths)))
        for mb in mbs:
            assert len(mb) == 1 or len(mb) * max(lengths[i] for i in mb) <= budget


def test_split_even():
    assert [list(r) for r in split_even(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(r) for r in split_even(2, 4)] == [[0], [1]]
