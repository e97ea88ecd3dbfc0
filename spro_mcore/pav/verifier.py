"""The process advantage verifier as a megatron-core model: the policy's GPTModel (same build, TP/PP, HF
weights) whose vocabulary output is replaced by a 1-unit value head, read at the last token of every step.

Batch layout (identical on every TP and PP rank of a data-parallel replica):
- `input_ids` [B, L]: prompt + whole response, right padded;
- `read_pos` [B, S]: position of the token whose hidden state gives each step's value (the prompt's last
  token for step 0 = V(s_1), then the last token of steps 1..num_steps); padded entries point at 0;
- `read_mask` [B, S]: which entries are real.
The value head is a replicated nn.Linear(hidden, 1) on the last pipeline stage (its input, the final-norm
hidden state, is the same on every TP rank, so TP ranks compute the same gradient). The logit of the
prediction is returned; Q = sigmoid(logit).

On disk (an HF-style directory, `export_verifier` / `load_verifier`): the body as an HF causal LM
(config.json, model.safetensors, tokenizer files), `value_head.safetensors`, and `pav_verifier.json` naming
the head, the base policy and the step splitter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from spro_mcore.errors import UserError
from spro_mcore.models.unwrap import as_list, unwrap
from spro_mcore.parallel import collectives

HEAD_FILE = "value_head.safetensors"
VERIFIER_CONFIG = "pav_verifier.json"


def attach_value_head(chunks, *, seed: int = 0) -> None:
    """Give the last-stage chunk a value head (the same initial weights on every rank); the vocabulary
    output layer is no longer trained (a tied embedding still is, through the input)."""
    last = unwrap(as_list(chunks)[-1])
    if not last.post_process:
        return
    hidden = last.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, 1, dtype=last.config.params_dtype, device=next(last.parameters()).device)
    with torch.no_grad():
        head.weight.copy_((torch.randn(1, hidden, generator=g) * hidden ** -0.5).to(head.weight.dtype))
        head.bias.zero_()
    last.value_head = head
    if not last.share_embeddings_and_output_weights:
        last.output_layer.weight.requires_grad_(False)


def value_logits(model, hidden: torch.Tensor, read_pos: torch.Tensor) -> torch.Tensor:
    """[B, S] logits from the last stage's final hidden states [L, B, H]."""
    m = unwrap(model)
    pos = read_pos.to(hidden.device).long()
    rows = torch.arange(pos.shape[0], device=hidden.device)[:, None].expand_as(pos)
    return m.value_head(hidden[pos, rows]).squeeze(-1).float()


def make_value_forward_step(loss_fn):
    """forward_step_func for megatron's forward_backward_func; `loss_fn(batch, logits [b, S])` on the last stage."""

    def loss_func(model, batch, hidden):
        return loss_fn(batch, value_logits(model, hidden, batch["read_pos"]))

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        device = next(unwrap(model).parameters()).device
        ids = batch["input_ids"].to(device)
        pos = torch.arange(ids.shape[1], device=device).unsqueeze(0).expand_as(ids)
        return model(ids, pos, None, output_hidden=True), partial(loss_func, model, batch)

    return forward_step


def micro_batches(batch: dict, mbs: int) -> list[dict]:
    """Split a batch dict into micro-batches of exactly `mbs` rows (pipeline p2p needs one shape); the last
    is padded with copies whose read_mask is all False."""
    b = batch["input_ids"].shape[0]
    pad = (-b) % mbs
    if pad:
        batch = {k: torch.cat([v, v[-1:].expand(pad, *v.shape[1:])]) for k, v in batch.items()}
        batch["read_mask"][b:] = False
        if "weights" in batch:
            batch["weights"][b:] = 0
    n = (b + pad) // mbs
    return [{k: v[i * mbs:(i + 1) * mbs] for k, v in batch.items()} for i in range(n)]


@torch.no_grad()
def predict_logits(models, batch: dict, *, micro_batch_size: Optional[int] = None) -> torch.Tensor:
    """Forward-only [B, S] value logits on every rank (collective over TP and PP)."""
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    chunks = as_list(models)
    b, seq = batch["input_ids"].shape
    s = batch["read_pos"].shape[1]
    mbs = micro_batch_size or b
    micro = micro_batches({k: batch[k] for k in ("input_ids", "read_pos", "read_mask")}, mbs)
    was_training = [unwrap(c).training for c in chunks]
    for c in chunks:
        c.eval()

    def collect(mb, logits):
        return logits.new_zeros(()), {"logits": logits}

    try:
        outputs = get_forward_backward_func()(
            forward_step_func=make_value_forward_step(collect),
            data_iterator=[iter(micro) for _ in chunks] if len(chunks) > 1 else iter(micro), model=chunks,
            num_microbatches=len(micro), seq_length=seq, micro_batch_size=mbs, forward_only=True)
    finally:
        for c, t in zip(chunks, was_training):
            c.train(t)
    device = next(unwrap(chunks[0]).parameters()).device
    if mpu.is_pipeline_last_stage():
        logits = torch.cat([o["logits"] for o in outputs])[:b].float()
    else:
        logits = torch.empty(b, s, dtype=torch.float32, device=device)
    collectives.broadcast(logits, mpu.get_pipeline_model_parallel_world_size() - 1, group="pp")
    return logits


def build_verifier(path: str, model_cfg=None, *, seed: int = 0):
    """(chunks, arch, info): a new verifier from an HF policy directory, or a trained one from an exported
    verifier directory (its value head loaded). Collective over the job."""
    from spro_mcore.models.loader import load_model

    info = read_verifier_config(path) if (Path(path) / VERIFIER_CONFIG).is_file() else None
    chunks, arch = load_model(path, model_cfg)
    attach_value_head(chunks, seed=seed)
    if info is not None:
        _load_head(chunks, path)
    return chunks, arch, info


def read_verifier_config(path: str | Path) -> dict:
    cfg_path = Path(path) / VERIFIER_CONFIG
    if not cfg_path.is_file() or not (Path(path) / HEAD_FILE).is_file():
        raise UserError(f"{path} is not a PAV verifier: it has no value head ({VERIFIER_CONFIG} and {HEAD_FILE}); "
                        f"train one with `spro-mcore pav train`")
    info = json.loads(cfg_path.read_text())
    if info.get("head") != "value":
        raise UserError(f"{cfg_path}: head={info.get('head')!r}, expected 'value'")
    return info


def load_verifier(path: str, model_cfg=None):
    """A trained verifier (refuses a directory without a value head)."""
    read_verifier_config(path)
    return build_verifier(path, model_cfg)


@torch.no_grad()
def _load_head(chunks, path) -> None:
    from safetensors.torch import load_file

    last = unwrap(as_list(chunks)[-1])
    if not last.post_process:
        return
    tensors = load_file(str(Path(path) / HEAD_FILE))
    last.value_head.weight.copy_(tensors["value_head.weight"])
    last.value_head.bias.copy_(tensors["value_head.bias"])


@contextlib.contextmanager
def _body_only(chunks):
    last = unwrap(as_list(chunks)[-1])
    head = last._modules.pop("value_head", None)
    try:
        yield
    finally:
        if head is not None:
            last.value_head = head


@torch.no_grad()
def _head_tensors(chunks) -> dict[str, torch.Tensor]:
    """The value head's tensors on every rank (broadcast from the last pipeline stage)."""
    from megatron.core import parallel_state as mpu

    last = unwrap(as_list(chunks)[-1])
    hidden = last.config.hidden_size
    if last.post_process:
        w, b = last.value_head.weight.detach().float().clone(), last.value_head.bias.detach().float().clone()
    else:
        w, b = torch.empty(1, hidden), torch.empty(1)
    last_stage = mpu.get_pipeline_model_parallel_world_size() - 1
    collectives.broadcast(w, last_stage, group="pp")
    collectives.broadcast(b, last_stage, group="pp")
    return {"value_head.weight": w.contiguous(), "value_head.bias": b.contiguous()}


def export_verifier(chunks, arch, base_dir: str, out_dir: str, info: dict, *, write: bool) -> None:
    """Write the verifier as an HF-style directory (collective: every rank calls it; `write` on one rank)."""
    from safetensors.torch import save_file

    from spro_mcore.models.export import export_hf_weights

    head = _head_tensors(chunks)
    with _body_only(chunks):  # the HF weight map knows the policy's parameters, not the head
        tensors = {name: t.detach().cpu().clone() for name, t in export_hf_weights(chunks, arch)}
    if not write:
        return
    out = Path(out_dir)
    tmp = out / ".export.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in Path(base_dir).iterdir():  # config, tokenizer, generation config: everything but the weights
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt", ".index.json")) \
                and f.name != VERIFIER_CONFIG:
            shutil.copy2(f, tmp / f.name)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    save_file(head, str(tmp / HEAD_FILE))
    (tmp / VERIFIER_CONFIG).write_text(json.dumps({"head": "value", **info}, indent=2, sort_keys=True) + "\n")
    # each file replaced atomically; the verifier config last, so a directory with it is complete
    names = sorted(p.name for p in tmp.iterdir() if p.name != VERIFIER_CONFIG) + [VERIFIER_CONFIG]
    (out / VERIFIER_CONFIG).unlink(missing_ok=True)
    for name in names:
        os.replace(tmp / name, out / name)
    tmp.rmdir()
