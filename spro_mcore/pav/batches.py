"""Collection rows -> verifier batches: one sequence per sampled response (prompt + whole response), read at
the last token of each step, with the Q-hat targets and class-balance weights of those steps.

Class balance (the paper's buckets): targets with Q-hat >= 0.5 and < 0.5 carry equal total weight over the
training set, w = N / (2 N_bucket) (1 for a bucket that is empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Response:
    prompt_index: int
    sample_index: int
    input_ids: list[int]  # prompt + whole response
    read_pos: list[int]  # per step 0..num_steps: the position read for its value
    q_hat: list[float]
    outcome: float


def responses_from_rows(rows: list[dict]) -> list[Response]:
    """Group rows by (prompt_index, sample_index); every step 0..num_steps must be present."""
    by_key: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["prompt_index"], r["sample_index"]), []).append(r)
    out = []
    for key in sorted(by_key):
        steps = sorted(by_key[key], key=lambda r: r["step"])
        if [r["step"] for r in steps] != list(range(steps[0]["num_steps"] + 1)):
            raise ValueError(f"collection rows of prompt {key[0]} sample {key[1]} do not hold steps 0..num_steps")
        prompt = list(steps[0]["prompt_token_ids"])
        full = list(steps[-1]["prefix_token_ids"])
        out.append(Response(
            prompt_index=key[0], sample_index=key[1], input_ids=prompt + full,
            read_pos=[len(prompt) + len(r["prefix_token_ids"]) - 1 for r in steps],
            q_hat=[float(r["q_hat"]) for r in steps], outcome=float(steps[0]["outcome"])))
    return out


def class_weights(responses: list[Response]) -> tuple[float, float]:
    """(weight of Q-hat < 0.5, weight of Q-hat >= 0.5)."""
    targets = [q for r in responses for q in r.q_hat]
    high = sum(q >= 0.5 for q in targets)
    low = len(targets) - high
    n = len(targets)
    return (n / (2 * low) if low else 1.0), (n / (2 * high) if high else 1.0)


def make_batch(responses: list[Response], *, length: int, steps: int, pad_id: int = 0,
               weights: tuple[float, float] = (1.0, 1.0)) -> dict[str, torch.Tensor]:
    """Tensors of `responses`, padded to `length` tokens and `steps` read positions."""
    b = len(responses)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    read_pos = torch.zeros(b, steps, dtype=torch.long)
    mask = torch.zeros(b, steps, dtype=torch.bool)
    targets = torch.zeros(b, steps, dtype=torch.float32)
    w = torch.zeros(b, steps, dtype=torch.float32)
    outcome = torch.zeros(b, steps, dtype=torch.float32)
    for i, r in enumerate(responses):
        ids[i, :len(r.input_ids)] = torch.tensor(r.input_ids)
        s = len(r.read_pos)
        read_pos[i, :s] = torch.tensor(r.read_pos)
        mask[i, :s] = True
        targets[i, :s] = torch.tensor(r.q_hat)
        w[i, :s] = torch.tensor([weights[1] if q >= 0.5 else weights[0] for q in r.q_hat])
        outcome[i, :s] = r.outcome
    return dict(input_ids=ids, read_pos=read_pos, read_mask=mask, targets=targets, weights=w, outcome=outcome)
