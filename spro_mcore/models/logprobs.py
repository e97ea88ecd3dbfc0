"""Log-probs and entropy of sampled response tokens, response-aligned [B, T], under TP and PP.

Batch layout (what the trainer passes; identical on every TP and PP rank of one data-parallel replica):

- `input_ids` [B, L] int64: prompt + response token ids, right padded (any pad id).
- `prompt_lens` [B], `response_lens` [B] int: row i holds its prompt in [0, p_i) and its response in
  [p_i, p_i + r_i); p_i + r_i <= L, p_i >= 1.
- outputs [B, T] float32, T = `response_width` (default max r_i): column j of row i is the log-prob (entropy)
  of response token j, i.e. of input_ids[i, p_i + j] given input_ids[i, :p_i + j], at temperature
  `temperature` (logits / temperature). Columns j >= r_i are 0 (`response_mask` is a prefix of ones).

Packed micro-batches (THD, models/packing.py: rows laid end to end in one row, `cu_seqlens` boundaries) give
the same [n, T] per-row outputs: `sequence_logprobs(..., packs=groups)` packs the given groups of rows, and
`make_forward_step` runs any micro-batch dict that carries `cu_seqlens` with megatron's PackedSeqParams.

Only the hidden states that predict response tokens go through the output layer, in chunks of
`chunk_tokens` (models/logprob_kernel.py): the [tokens, vocab] logits never exist.

Two flavours:

- `sequence_logprobs(...)`: forward-only (no grad) through megatron-core's schedule
  (`get_forward_backward_func`), micro-batched; the result is computed on the last pipeline stage and
  broadcast to the others, so every rank returns the same [B, T] tensors.
- `make_forward_step(loss_fn, ...)`: a `forward_step_func` for megatron's `forward_backward_func` in
  training. The data iterator yields micro-batch dicts with at least `input_ids`, `prompt_lens`,
  `response_lens` (plus whatever `loss_fn` needs, e.g. advantages [b, T], old_logprobs [b, T]). On the last
  stage `loss_fn(batch, logprobs [b, T], entropy [b, T] | None)` is called with differentiable log-probs and
  must return what megatron-core expects from a loss function: `(loss, metrics_dict)` -- megatron then
  multiplies by the CP size and divides by the number of micro-batches -- or `(loss, num_tokens, metrics)`
  -- divided by num_tokens and num_micro-batches unless `config.calculate_per_token_loss`. Normalise for the
  GLOBAL batch inside loss_fn accordingly.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch

from spro_mcore.models.logprob_kernel import vocab_parallel_logprobs
from spro_mcore.models.packing import pack_len_for, pack_micro_batches, packed_seq_params
from spro_mcore.models.unwrap import as_list, unwrap
from spro_mcore.parallel import collectives

DEFAULT_CHUNK_TOKENS = 1024


def response_index(prompt_lens: torch.Tensor, response_lens: torch.Tensor, width: int):
    """(rows, cols) of every response token with cols < width: token j of row i sits at position p_i + j."""
    prompt_lens, response_lens = prompt_lens.long(), response_lens.clamp(max=width).long()
    cols = torch.arange(width, device=prompt_lens.device)
    valid = cols[None, :] < response_lens[:, None]
    rows, cols = valid.nonzero(as_tuple=True)
    return rows, cols


def logprobs_from_hidden(model, hidden: torch.Tensor, input_ids: torch.Tensor, prompt_lens: torch.Tensor,
                         response_lens: torch.Tensor, *, temperature: float = 1.0, with_entropy: bool = False,
                         chunk_tokens: int = DEFAULT_CHUNK_TOKENS, response_width: Optional[int] = None,
                         seq_starts: Optional[torch.Tensor] = None):
    """[B, T] log-probs (and entropy) from the last stage's final hidden states [S, B, H] (S = L).
    Packed (`seq_starts` [n]: where each row's sequence starts in the pack): hidden [S, 1, H], input_ids
    [1, S], and row i of the outputs is the sequence at seq_starts[i]."""
    from megatron.core import parallel_state as mpu

    m = unwrap(model)
    width = int(response_lens.max()) if response_width is None else int(response_width)
    b = prompt_lens.shape[0]
    if int(prompt_lens.min()) < 1:
        raise ValueError("every row needs a prompt of at least one token (prompt_lens >= 1)")
    ends = prompt_lens + response_lens + (0 if seq_starts is None else seq_starts.to(prompt_lens.device).long())
    if int(ends.max()) > input_ids.shape[1]:
        raise ValueError("prompt_lens + response_lens exceeds the width of input_ids")
    rows, cols = response_index(prompt_lens.to(hidden.device), response_lens.to(hidden.device), width)
    pos = prompt_lens.to(hidden.device).long()[rows] + cols
    if seq_starts is None:
        seq_idx, batch_idx = pos, rows
    else:
        seq_idx, batch_idx = seq_starts.to(hidden.device).long()[rows] + pos, torch.zeros_like(rows)
    sp = m.config.sequence_parallel
    if sp:
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

        hidden = gather_from_sequence_parallel_region(hidden)
    h = hidden[seq_idx - 1, batch_idx]  # the hidden state before token t predicts token t
    targets = input_ids.to(hidden.device)[batch_idx, seq_idx]
    tp_group = mpu.get_tensor_model_parallel_group() if mpu.get_tensor_model_parallel_world_size() > 1 else None
    lp, ent = vocab_parallel_logprobs(
        h, m.output_weight(), targets, vocab_size=m.hf_arch.vocab_size, temperature=temperature,
        chunk_tokens=chunk_tokens, with_entropy=with_entropy, tp_group=tp_group,
        tp_rank=mpu.get_tensor_model_parallel_rank(), sequence_parallel=sp)
    out_lp = lp.new_zeros(b, width).index_put((rows, cols), lp)
    out_ent = ent.new_zeros(b, width).index_put((rows, cols), ent) if with_entropy else None
    return out_lp, out_ent


def model_seq_length(seq: int, models) -> int:
    """The sequence length the model runs at: under sequence parallelism megatron splits the sequence over
    the TP ranks, so it is padded up to a multiple of TP (right padding changes no earlier position)."""
    config = unwrap(as_list(models)[0]).config
    if not config.sequence_parallel:
        return seq
    tp = config.tensor_model_parallel_size
    return -(-seq // tp) * tp


def micro_batch_multiple(models) -> int:
    """The number of micro-batches must be a multiple of this: megatron's interleaved (virtual pipeline)
    schedule runs them in groups of `microbatch_group_size_per_vp_stage` (the PP size by default)."""
    chunks = as_list(models)
    if len(chunks) == 1:
        return 1
    return unwrap(chunks[0]).config.microbatch_group_size_per_vp_stage


def _model_inputs(input_ids: torch.Tensor, device, seq: int):
    ids = input_ids.to(device)
    if seq > ids.shape[1]:
        ids = torch.cat([ids, ids.new_zeros(ids.shape[0], seq - ids.shape[1])], dim=1)
    pos = torch.arange(ids.shape[1], device=device).unsqueeze(0).expand_as(ids)
    return ids, pos


def make_forward_step(loss_fn: Callable, *, temperature: float = 1.0, with_entropy: bool = False,
                      chunk_tokens: int = DEFAULT_CHUNK_TOKENS, response_width: Optional[int] = None):
    """forward_step_func(data_iterator, model) for megatron's forward_backward_func (see module docstring)."""

    def loss_func(model, batch, hidden):
        packed = "cu_seqlens" in batch
        lp, ent = logprobs_from_hidden(
            model, hidden, batch["input_ids"], batch["prompt_lens"], batch["response_lens"],
            temperature=temperature, with_entropy=with_entropy, chunk_tokens=chunk_tokens,
            response_width=response_width,
            seq_starts=batch["seq_starts"] if packed else None)
        return loss_fn(batch, lp, ent)

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        device = next(unwrap(model).parameters()).device
        if "cu_seqlens" in batch:  # packed (THD): attention within segments, positions restart per segment
            out = model(batch["input_ids"].to(device), batch["position_ids"].to(device), None,
                        packed_seq_params=packed_seq_params(batch["cu_seqlens"], device), output_hidden=True)
        else:
            ids, pos = _model_inputs(batch["input_ids"], device, model_seq_length(batch["input_ids"].shape[1], model))
            out = model(ids, pos, None, output_hidden=True)
        return out, partial(loss_func, model, batch)

    return forward_step


def _micro_batches(input_ids, prompt_lens, response_lens, mbs: int, count_multiple: int = 1):
    """Split into micro-batches of exactly `mbs` rows (pipeline p2p needs one shape), as many as a multiple
    of `count_multiple`; the padding rows have no response tokens."""
    b = input_ids.shape[0]
    pad = (-b) % (mbs * count_multiple)
    if pad:
        input_ids = torch.cat([input_ids, input_ids[-1:].expand(pad, -1)])
        prompt_lens = torch.cat([prompt_lens, prompt_lens.new_ones(pad)])
        response_lens = torch.cat([response_lens, response_lens.new_zeros(pad)])
    return [dict(input_ids=i, prompt_lens=p, response_lens=r) for i, p, r in
            zip(input_ids.split(mbs), prompt_lens.split(mbs), response_lens.split(mbs))]


def build_packs(models, input_ids: torch.Tensor, prompt_lens: torch.Tensor, response_lens: torch.Tensor,
                groups: list[list[int]], fields: Optional[dict[str, torch.Tensor]] = None) -> tuple[list[dict], int]:
    """(packed micro-batches of `groups`, their common length): the one place both the log-prob passes and
    the update pack, so their shapes match (the first update's PPO ratio stays exactly 1). With sequence
    parallelism the length is a multiple of the TP size (the sequence is split over TP ranks)."""
    from megatron.core import parallel_state as mpu

    sp = unwrap(as_list(models)[0]).config.sequence_parallel
    multiple = mpu.get_tensor_model_parallel_world_size() if sp else 1
    covered = sorted(i for g in groups for i in g)
    if covered != list(range(input_ids.shape[0])):
        raise ValueError("packs must hold every row of the batch exactly once")
    pack_len = pack_len_for(prompt_lens + response_lens, groups, multiple)
    return pack_micro_batches(input_ids, prompt_lens, response_lens, groups, pack_len=pack_len,
                              fields=fields), pack_len


@torch.no_grad()
def sequence_logprobs(models, input_ids: torch.Tensor, prompt_lens: torch.Tensor, response_lens: torch.Tensor, *,
                      temperature: float = 1.0, with_entropy: bool = False, micro_batch_size: Optional[int] = None,
                      chunk_tokens: int = DEFAULT_CHUNK_TOKENS, response_width: Optional[int] = None,
                      packs: Optional[list[list[int]]] = None,
                      ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Forward-only (logprobs [B, T], entropy [B, T] | None) on every rank; collective over TP and PP.
    Padded micro-batches of `micro_batch_size` rows, or, with `packs` (groups of row numbers covering the
    batch), one packed micro-batch per group."""
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    chunks = as_list(models)
    b, seq = input_ids.shape
    prompt_lens, response_lens = torch.as_tensor(prompt_lens).long(), torch.as_tensor(response_lens).long()
    width = int(response_lens.max()) if response_width is None else int(response_width)
    if packs is not None:
        micro, seq = build_packs(chunks, input_ids, prompt_lens, response_lens, packs)
        mbs = 1
    else:
        mbs = micro_batch_size or b
        micro = _micro_batches(input_ids, prompt_lens, response_lens, mbs, micro_batch_multiple(chunks))
    # eval() walks every module (~1 ms a call on a small model): only the chunks in training mode pay it
    switched = [c for c in chunks if c.training or unwrap(c).training]
    for c in switched:
        c.eval()

    def collect(batch, lp, ent):
        return lp.new_zeros(()), {"logprobs": lp, "entropy": ent}

    step = make_forward_step(collect, temperature=temperature, with_entropy=with_entropy,
                             chunk_tokens=chunk_tokens, response_width=width)
    try:
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=[iter(micro) for _ in chunks] if len(chunks) > 1 else iter(micro),
            model=chunks, num_microbatches=len(micro), seq_length=model_seq_length(seq, chunks),
            micro_batch_size=mbs, forward_only=True)
    finally:
        for c in switched:
            c.train()
    device = next(unwrap(chunks[0]).parameters()).device
    if mpu.is_pipeline_last_stage():
        lp = torch.cat([o["logprobs"] for o in outputs])[:b]
        ent = torch.cat([o["entropy"] for o in outputs])[:b] if with_entropy else None
        if packs is not None:  # back to batch row order
            order = torch.cat([mb["rows"] for mb in micro]).to(lp.device)
            lp = lp.new_zeros(lp.shape).index_copy(0, order, lp)
            ent = ent.new_zeros(ent.shape).index_copy(0, order, ent) if with_entropy else None
    else:
        lp = torch.empty(b, width, dtype=torch.float32, device=device)
        ent = torch.empty_like(lp) if with_entropy else None
    last = mpu.get_pipeline_model_parallel_world_size() - 1
    collectives.broadcast(lp, src_group_rank=last, group="pp")
    if with_entropy:
        collectives.broadcast(ent, src_group_rank=last, group="pp")
    return lp, ent
