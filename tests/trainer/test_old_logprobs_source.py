"""Which log-probs are pi_old (and so enter SPRO's process reward r_t = beta * (old - ref)):
algo.old_logprobs=engine takes the engine's own log-probs of its samples (padding zeroed), recompute the
trainer's pass. Checked on Trainer._old_logprobs with a policy whose log-probs differ from the engine's."""

from types import SimpleNamespace

import pytest
import torch

from spro_mcore.algo.advantages import spro_advantage_terms
from spro_mcore.trainer.loop import Trainer


class _Policy:
    def __init__(self, out):
        self.out = out

    def logprobs(self, batch, with_entropy=False, reference=False):
        return self.out, torch.zeros_like(self.out)


def _batch():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    engine = -torch.rand(2, 4, generator=g)
    return SimpleNamespace(engine_logprobs=engine, response_mask=mask), -torch.rand(2, 4, generator=g)


@pytest.mark.parametrize("source", ["engine", "recompute"])
def test_old_logprobs_come_from_the_configured_source(source):
    batch, trainer_lp = _batch()
    fake = SimpleNamespace(cfg=SimpleNamespace(algo=SimpleNamespace(old_logprobs=source)), policy=_Policy(trainer_lp))
    old, _ = Trainer._old_logprobs(fake, batch)
    expected = batch.engine_logprobs * batch.response_mask if source == "engine" else trainer_lp
    assert torch.equal(old, expected)
    # the process reward sees the chosen source: the two sources give different SPRO terms
    ref = torch.zeros(2, 4)
    other = trainer_lp if source == "engine" else batch.engine_logprobs * batch.response_mask
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    a, _ = spro_advantage_terms(old, ref, batch.response_mask, rewards, groups, beta=1.0)
    b, _ = spro_advantage_terms(other, ref, batch.response_mask, rewards, groups, beta=1.0)
    assert not torch.equal(a, b)
