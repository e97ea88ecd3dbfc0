"""Quality of a verifier on held-out prefixes: BCE and Brier score against the Q-hat targets, the AUC of
predicting the sampled response's final outcome from each prefix's prediction, and that AUC within prompts
(only pairs of prefixes of the same prompt are compared: what search and RL use, ranking continuations of one
prompt, free of how hard the prompts are)."""

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


def grouped_auc(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> float:
    """AUC over the (positive, negative) pairs within each group, pooled: the share of same-group pairs with
    different labels that the scores order correctly (ties one half); NaN when no group has both labels."""
    scores, labels, groups = scores.double().flatten(), labels.bool().flatten(), groups.flatten()
    concordant, pairs = 0.0, 0
    for g in torch.unique(groups):
        sel = groups == g
        pos = int(labels[sel].sum())
        n_pairs = pos * (int(sel.sum()) - pos)
        if n_pairs:
            concordant += auc(scores[sel], labels[sel]) * n_pairs
            pairs += n_pairs
    return concordant / pairs if pairs else math.nan


def verifier_metrics(logits: torch.Tensor, targets: torch.Tensor, outcome: torch.Tensor, mask: torch.Tensor,
                     prompt: torch.Tensor | None = None) -> dict:
    """`prompt` (the prompt index of every read position) adds the within-prompt AUC."""
    lg, q, y = logits[mask].double(), targets[mask].double(), outcome[mask].double()
    p = torch.sigmoid(lg)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(lg, q)
    out = {"eval/bce": float(bce), "eval/brier": float(((p - q) ** 2).mean()), "eval/auc_outcome": auc(p, y),
           "eval/prefixes": int(mask.sum())}
    if prompt is not None:
        out["eval/auc_within_prompt"] = grouped_auc(p, y, prompt[mask])
    return out
