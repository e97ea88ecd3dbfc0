"""Group bookkeeping and mask checks against direct loops."""
from __future__ import annotations

import pytest
import torch

from spro_mcore.algo.groups import alive_counts, group_index, group_sizes
from spro_mcore.algo.validation import response_lengths

pytestmark = pytest.mark.unit


def test_group_index_maps_arbitrary_ids():
    index, num_groups = group_index(torch.tensor([70, -3, 70, 5, -3, 70]))
    assert num_groups == 3
    assert index.tolist() == [2, 0, 2, 1, 0, 2]  # sorted unique ids: -3, 5, 70
    assert group_sizes(index, num_groups, torch.float32).tolist() == [2.0, 1.0, 3.0]


def test_alive_counts_against_loop():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch, width = int(torch.randint(1, 10, (1,), generator=g)), int(torch.randint(1, 8, (1,), generator=g))
        index = torch.randint(0, 3, (batch,), generator=g)
        index, num_groups = group_index(index)
        lengths = torch.randint(0, width + 1, (batch,), generator=g)
        got = alive_counts(index, lengths, num_groups, width, torch.float64)
        expected = [[sum(1 for k in range(batch) if index[k] == q and t < lengths[k]) for t in range(width)]
                    for q in range(num_groups)]
        assert got.tolist() == expected


def test_response_lengths_of_prefix_masks():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    assert response_lengths("m", mask).tolist() == [3, 0, 1, 2]
    assert response_lengths("m", mask[:, :1]).tolist() == [1, 0, 1, 1]


def test_response_lengths_names_the_bad_rows():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match=r"m must be a prefix of ones in every row .*rows \[1, 2\]"):
        response_lengths("m", mask)
