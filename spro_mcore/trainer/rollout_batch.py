"""The rollout batch: prompts and the engine's sampled groups as padded tensors, in the layout the
log-prob passes and `spro_mcore/algo` expect.

Layout (B sequences, L = longest prompt+response, T = longest response):
- `input_ids [B, L]`: prompt then response, right-padded with `pad_id`;
- `prompt_lens [B]`, `response_lens [B]`;
- `response_mask [B, T]`: ones on each response (its final EOS included), a prefix of ones per row;
- `engine_logprobs [B, T]`: the engine's log-prob of each sampled token (0 on padding);
- `rewards [B]`, `group_ids [B]`: outcome rewards; one group id per prompt;
- `policy_version [B]`: the policy version (weight syncs counted in steps) whose engine weights sampled each
  row, so the step that trains on it knows its staleness (None where the batch was not built from a rollout).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor
    prompt_lens: torch.Tensor
    response_lens: torch.Tensor
    response_mask: torch.Tensor
    engine_logprobs: torch.Tensor
    rewards: torch.Tensor
    group_ids: torch.Tensor
    policy_version: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def total_lens(self) -> torch.Tensor:
        return self.prompt_lens + self.response_lens

    def select(self, index) -> "RolloutBatch":
        """Rows `index` (a list or tensor of row numbers), trimmed to their own longest lengths."""
        index = torch.as_tensor(index, dtype=torch.long)
        rows = {f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                for f in fields(self)}
        L = int((rows["prompt_lens"] + rows["response_lens"]).max())
        T = int(rows["response_lens"].max())
        rows["input_ids"] = rows["input_ids"][:, :L]
        rows["response_mask"] = rows["response_mask"][:, :T]
        rows["engine_logprobs"] = rows["engine_logprobs"][:, :T]
        return RolloutBatch(**rows)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def build_rollout_batch(prompt_token_ids: list[list[int]], groups, rewards: list[list[float]], *, pad_id: int,
                        group_offset: int = 0, policy_version: int = 0) -> RolloutBatch:
    """`groups[i]` are the samples (`rollout.engine.Sample`) of prompt i and `rewards[i]` their rewards.
    Group ids are `group_offset + i` (make them globally unique across data-parallel ranks)."""
    seqs, p_lens, r_lens, lps, rew, gids = [], [], [], [], [], []
    for i, (prompt, samples) in enumerate(zip(prompt_token_ids, groups, strict=True)):
        for sample, r in zip(samples, rewards[i], strict=True):
            seqs.append(list(prompt) + list(sample.token_ids))
            p_lens.append(len(prompt))
            r_lens.append(len(sample.token_ids))
            lps.append(sample.logprobs)
            rew.append(float(r))
            gids.append(group_offset + i)
    B, L, T = len(seqs), max(map(len, seqs)), max(r_lens)
    if min(r_lens) == 0:
        raise ValueError("the engine returned an empty response (0 tokens); every sample needs at least one token")
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    engine_logprobs = torch.zeros(B, T, dtype=torch.float32)
    for b, (s, lp) in enumerate(zip(seqs, lps)):
        input_ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        engine_logprobs[b, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
    response_lens = torch.tensor(r_lens, dtype=torch.long)
    return RolloutBatch(
        input_ids=input_ids,
        prompt_lens=torch.tensor(p_lens, dtype=torch.long),
        response_lens=response_lens,
        response_mask=torch.arange(T).unsqueeze(0) < response_lens.unsqueeze(1),
        engine_logprobs=engine_logprobs,
        rewards=torch.tensor(rew, dtype=torch.float32),
        group_ids=torch.tensor(gids, dtype=torch.long),
        policy_version=torch.full((B,), policy_version, dtype=torch.long),
    )
