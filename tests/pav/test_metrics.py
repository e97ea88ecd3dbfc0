"""The verifier's held-out ranking metrics against slow pairwise loops: the AUC, and the within-prompt AUC (only
pairs of the same prompt count), with ties, absent classes and hand-made cases."""
from __future__ import annotations

import math
import random

import pytest
import torch

from spro_mcore.pav.metrics import auc, grouped_auc, verifier_metrics

pytestmark = pytest.mark.unit


def _pairwise(scores, labels, groups=None) -> float:
    """Every (positive, negative) pair, one by one: 1 when ordered right, 1/2 when tied."""
    hit, n = 0.0, 0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if labels[i] and not labels[j] and (groups is None or groups[i] == groups[j]):
                n += 1
                hit += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return hit / n if n else math.nan


def test_hand_cases():
    s = torch.tensor([0.9, 0.1, 0.2, 0.8])
    y = torch.tensor([1, 0, 1, 0])
    g = torch.tensor([0, 0, 1, 1])
    assert grouped_auc(s, y, g) == 0.5  # prompt 0 ranked right, prompt 1 wrong
    assert auc(s, y) == 0.75  # pooled: 0.9 > 0.1, 0.9 > 0.8, 0.2 > 0.1 right; 0.2 < 0.8 wrong
    # a verifier that only knows which prompt is easy: perfect overall, chance within prompts
    s = torch.tensor([0.9, 0.9, 0.1, 0.1])
    y = torch.tensor([1, 0, 0, 0])
    g = torch.tensor([0, 0, 1, 1])
    assert auc(s, y) == pytest.approx(5 / 6) and grouped_auc(s, y, g) == 0.5
    assert math.isnan(grouped_auc(s, torch.tensor([1, 1, 0, 0]), g))  # no prompt has both outcomes


@pytest.mark.parametrize("seed", range(5))
def test_against_the_pairwise_loop(seed):
    rng = random.Random(seed)
    n = rng.randrange(5, 60)
    scores = [round(rng.random(), 1) for _ in range(n)]  # coarse: many ties
    labels = [rng.random() < 0.4 for _ in range(n)]
    groups = [rng.randrange(4) for _ in range(n)]
    s, y, g = torch.tensor(scores), torch.tensor(labels), torch.tensor(groups)
    assert auc(s, y) == pytest.approx(_pairwise(scores, labels), abs=1e-12)
    ref = _pairwise(scores, labels, groups)
    got = grouped_auc(s, y, g)
    assert (math.isnan(ref) and math.isnan(got)) or got == pytest.approx(ref, abs=1e-12)


def test_verifier_metrics_reads_the_prompt_of_every_masked_position():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 1.0, 3.0]])
    outcome = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    prompt = torch.tensor([[7, 7, 7], [7, 7, 7]])
    m = verifier_metrics(logits, outcome, outcome, mask, prompt)
    flat_p, flat_y = torch.sigmoid(logits[mask]).tolist(), outcome[mask].tolist()
    assert m["eval/auc_within_prompt"] == pytest.approx(_pairwise(flat_p, flat_y, [7] * 5))
    assert "eval/auc_within_prompt" not in verifier_metrics(logits, outcome, outcome, mask)
