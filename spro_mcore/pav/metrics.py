"""Quality of a verifier on held-out prefixes: BCE and Brier score against the Q-hat targets, and the AUC of
predicting the sampled response's final outcome from each prefix's prediction."""

from __future__ import annotations

import math

import torch


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted one half); NaN when one class is absent."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return math.nan
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    sorted_scores = scores[order]
    i, n = 0, len(scores)
    while i < n:  # average ranks over ties
        j = i
        while j + 1 < n and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def verifier_metrics(logits: torch.Tensor, targets: torch.Tensor, outcome: torch.Tensor, mask: torch.Tensor) -> dict:
    lg, q, y = logits[mask].double(), targets[mask].double(), outcome[mask].double()
    p = torch.sigmoid(lg)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(lg, q)
    return {"eval/bce": float(bce), "eval/brier": float(((p - q) ** 2).mean()), "eval/auc_outcome": auc(p, y),
            "eval/prefixes": int(mask.sum())}
