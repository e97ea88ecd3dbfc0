"""The policy's device seam: a rollout batch built on the CPU reaches the model's device in every micro-batch
(here `meta` stands in for a GPU), whatever device its fields came from."""

import pytest
import torch

from spro_mcore.trainer.policy.megatron_policy import _micro_batches
from spro_mcore.trainer.rollout_batch import build_rollout_batch
from spro_mcore.rollout.engine import Sample

pytestmark = pytest.mark.unit


def _batch():
    groups = [[Sample([5, 6, 7], [-0.1, -0.2, -0.3], "stop"), Sample([8], [-0.4], "stop")],
              [Sample([9, 9], [-0.5, -0.6], "length"), Sample([4, 3, 2], [-0.7, -0.8, -0.9], "stop")]]
    return build_rollout_batch([[1, 2], [3]], groups, [[1.0, 0.0], [0.0, 1.0]], pad_id=0)


@pytest.mark.parametrize("mbs", [1, 3])
def test_micro_batches_land_on_the_model_device(mbs):
    b = _batch()
    T = b.response_mask.shape[1]
    fields = {"advantages": torch.randn(len(b), T), "old_logprobs": torch.randn(len(b), T),
              "response_mask": b.response_mask.float()}
    micro = _micro_batches(b, fields, torch.arange(len(b)), mbs, torch.device("meta"))
    assert len(micro) == -(-len(b) // mbs)
    for mb in micro:
        assert mb.keys() == {"input_ids", "prompt_lens", "response_lens", *fields}
        assert all(v.device.type == "meta" for v in mb.values()), {k: v.device for k, v in mb.items()}
        assert all(v.shape[0] == mbs for v in mb.values())
