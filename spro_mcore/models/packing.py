"""Packed micro-batches (THD): several sequences laid end to end in one row, no padding between them.

For a group of rows [i_1, ..., i_n] of a right-padded batch (`input_ids` [B, L], `prompt_lens`,
`response_lens`), the packed micro-batch is a dict with

- `input_ids` [1, pack_len]: sequence i_1's prompt+response, then i_2's, ...; the tail up to `pack_len` is
  filler (id 0) that forms a segment of its own, so every pack of a pass has one shape (pipeline p2p needs it);
- `cu_seqlens` [n+1] or [n+2] int32: segment boundaries (0, len_1, len_1+len_2, ..., [pack_len]);
- `seq_starts` [n]: where each sequence starts in the row (cu_seqlens[:n]);
- `position_ids` [1, pack_len]: positions restart at 0 in every segment;
- `prompt_lens` [n], `response_lens` [n] and every extra field `fields[k][group]` ([n, ...]) of the group's
  rows, in group order: the per-row layout the loss functions already use;
- `rows` [n]: the group's row numbers in the batch it was cut from.

The model runs it with `PackedSeqParams(qkv_format="thd")`: attention stays within a segment
(models/core_attention.py on the local spec, Transformer Engine's fused attention on GPU) and RoPE restarts
per segment, so each sequence's outputs equal those of the padded layout.
"""

from __future__ import annotations

from typing import Optional

import torch


def pack_len_for(total_lens: torch.Tensor, groups: list[list[int]], multiple_of: int = 1) -> int:
    """The common row length of the packs: the longest group's token count, rounded up to `multiple_of`."""
    longest = max(int(total_lens[g].sum()) for g in groups)
    return -(-longest // multiple_of) * multiple_of


def pack_micro_batches(input_ids: torch.Tensor, prompt_lens: torch.Tensor, response_lens: torch.Tensor,
                       groups: list[list[int]], *, pack_len: Optional[int] = None,
                       fields: Optional[dict[str, torch.Tensor]] = None) -> list[dict]:
    """One packed micro-batch (see the module docstring) per group of row numbers."""
    total = (prompt_lens + response_lens).long()
    pack_len = pack_len or pack_len_for(total, groups)
    out = []
    for group in groups:
        lens = [int(total[i]) for i in group]
        used = sum(lens)
        if used > pack_len:
            raise ValueError(f"a pack of {used} tokens does not fit pack_len={pack_len}")
        seg = lens + ([pack_len - used] if used < pack_len else [])
        ids = torch.zeros(pack_len, dtype=input_ids.dtype)
        ids[:used] = torch.cat([input_ids[i, :n] for i, n in zip(group, lens)])
        cu = torch.tensor([0] + seg, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        pos = torch.cat([torch.arange(n) for n in seg])
        sel = torch.tensor(group, dtype=torch.long)
        mb = {"input_ids": ids[None], "cu_seqlens": cu, "seq_starts": cu[:len(group)].long(),
              "position_ids": pos[None], "rows": sel,
              "prompt_lens": prompt_lens[sel], "response_lens": response_lens[sel].clone()}
        for k, v in (fields or {}).items():
            mb[k] = v[sel].clone()
        out.append(mb)
    return out


def packed_seq_params(cu_seqlens: torch.Tensor, device):
    """megatron-core's PackedSeqParams for one pack (self-attention: the same boundaries for q and kv)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = cu_seqlens.to(device=device, dtype=torch.int32)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest)
