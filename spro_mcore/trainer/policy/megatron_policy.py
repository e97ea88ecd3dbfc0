"""The megatron-core implementation of the `Policy` seam: the policy (and its frozen reference) as megatron-core
models: log-prob passes, the PPO update, export, sharded state.

The policy is this rank's GPTModel chunks wrapped in megatron-core DDP with the (distributed) Megatron
optimizer and an LR schedule. The reference shares the architecture and is held either as a copy of the
initial weights that is swapped into the policy's parameters for the reference pass (`swap`: no second model,
one extra copy of the weights) or as a second, frozen model (`separate`).

Loss normalisation lives here, once: megatron-core's schedule divides a returned loss by the number of
micro-batches and DDP averages gradients over data-parallel ranks. Both are switched off
(`calculate_per_token_loss`: the schedule leaves the loss alone and DDP sums), and the PPO loss of every
micro-batch is normalised by the GLOBAL token / sequence counts of its mini-batch (all data-parallel ranks),
so the accumulated gradient equals the gradient of the one-big-batch loss.

With packing and more than one data-parallel replica, the rows of each global mini-batch are spread over
the replicas by tokens rather than by fixed row slices (`dp_balance.py`); the normalisation above is what
keeps the gradient the same.

Devices: batches arrive on the CPU; each micro-batch moves to the model's device as it is built, and every
result goes back to the CPU (`Policy`'s contract). Collectives go through `parallel.collectives`, which puts
their tensors on the backend's device (NCCL: CUDA, gloo: CPU).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from spro_mcore.config.schema import Config
from spro_mcore.parallel import collectives
from spro_mcore.parallel.distributed import Layout
from spro_mcore.trainer.micro_batches import split_even, token_balanced_micro_batches
from spro_mcore.trainer.policy.dp_balance import ReplicaView, Share, gather_replicas
from spro_mcore.trainer.policy.interface import Policy
from spro_mcore.trainer.policy.megatron_state import load_training_state, sharded_training_state
from spro_mcore.trainer.rollout_batch import RolloutBatch


class MegatronPolicy(Policy):
    def __init__(self, cfg: Config, layout: Layout, model_path: str, reference_path: str, *, total_updates: int):
        from spro_mcore.models.loader import load_model
        from spro_mcore.trainer.policy.megatron_optimizer import training_wrappers

        self.cfg, self.layout = cfg, layout
        # sequence parallelism reaches TransformerConfig (TE only); every model this policy loads uses it
        self._load = dict(sequence_parallel=cfg.parallel.sequence_parallel)
        chunks, self.arch = load_model(model_path, cfg.model, **self._load)
        self.device = next(chunks[0].parameters()).device
        self.model, self.optimizer, self.scheduler = training_wrappers(chunks, cfg, total_updates=total_updates)
        self._ref_chunks = None
        self._ref_tensors: Optional[list[torch.Tensor]] = None
        if cfg.model.reference_mode == "separate":
            self._ref_chunks, _ = load_model(reference_path, cfg.model, **self._load)
            for c in self._ref_chunks:
                c.requires_grad_(False)
        elif reference_path == model_path:
            self._ref_tensors = [p.detach().clone() for p in self._params()]
        else:
            self._ref_tensors = [torch.empty_like(p) for p in self._params()]
            self.load_reference(reference_path)

    # ---- parameters, reference, export -------------------------------------------------------------
    def _params(self) -> list[torch.nn.Parameter]:
        return [p for m in self.model for p in m.module.parameters()]

    @contextlib.contextmanager
    def _reference_weights(self):
        """Point the policy's parameters at the reference tensors (no copy) for one forward-only pass."""
        params = self._params()
        saved = [p.data for p in params]
        for p, r in zip(params, self._ref_tensors, strict=True):
            p.data = r
        try:
            yield
        finally:
            for p, d in zip(params, saved):
                p.data = d

    @torch.no_grad()
    def load_reference(self, path: str) -> None:
        from spro_mcore.models.loader import load_model

        chunks, _ = load_model(path, self.cfg.model, **self._load)
        src = [p for c in chunks for p in c.parameters()]
        dst = [p for c in self._ref_chunks for p in c.parameters()] if self._ref_chunks is not None else self._ref_tensors
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)

    def export_weights(self, dtype: Optional[torch.dtype] = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Full HF-named tensors of the current policy (collective: every rank must iterate)."""
        from spro_mcore.models.export import export_hf_weights

        return export_hf_weights(self.model, self.arch, dtype=dtype, bucket_bytes=self.cfg.rollout.bucket_bytes)

    def _fp8(self, models, *, forward_only: bool):
        """FP8 (Transformer Engine) for this pass per model.fp8 / model.fp8_scope."""
        from spro_mcore.models.fp8 import fp8_pass

        return fp8_pass(models, self.cfg.model.fp8, self.cfg.model.fp8_scope, forward_only=forward_only)

    # ---- log-probs --------------------------------------------------------------------------------
    def micro_batch_size(self, batch: RolloutBatch) -> int:
        return max(1, self.cfg.trainer.micro_batch_tokens // batch.input_ids.shape[1])

    def packs(self, batch: RolloutBatch, idx: torch.Tensor) -> Optional[list[list[int]]]:
        """With trainer.packing: the mini-batch `idx`'s rows (positions in idx) grouped into token-balanced
        packs of <= micro_batch_tokens real tokens; None for padded micro-batches. The log-prob passes and
        the update use the same groups."""
        if not self.cfg.trainer.packing:
            return None
        return token_balanced_micro_batches(batch.total_lens[idx].tolist(), self.cfg.trainer.micro_batch_tokens)

    def _update_micro_batches(self, batch: RolloutBatch, fields: dict, idx: torch.Tensor):
        """(micro-batches, seq_length, micro_batch_size) of one mini-batch for the update."""
        from spro_mcore.models.logprobs import build_packs, micro_batch_multiple, model_seq_length

        packs = self.packs(batch, idx)
        if packs is None:
            mbs = self.micro_batch_size(batch)
            micro = _micro_batches(batch, fields, idx, mbs, self.device, micro_batch_multiple(self.model))
            return micro, model_seq_length(batch.input_ids.shape[1], self.model), mbs
        micro, pack_len = build_packs(self.model, batch.input_ids[idx], batch.prompt_lens[idx],
                                      batch.response_lens[idx], packs, {k: v[idx] for k, v in fields.items()})
        return [_to_device(mb, self.device) for mb in micro], pack_len, 1

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, *, reference: bool = False, with_entropy: bool = False):
        """[B, T] log-probs (and entropy) of the responses under the policy or the reference, computed per
        mini-batch with the update's micro-batch shapes (so the first update's PPO ratio is exactly 1)."""
        from spro_mcore.models.logprobs import sequence_logprobs

        T = batch.response_mask.shape[1]
        models = self._ref_chunks if (reference and self._ref_chunks is not None) else self.model
        ctx = self._reference_weights() if (reference and self._ref_chunks is None) else contextlib.nullcontext()
        lps, ents = [], []
        with ctx, self._fp8(models, forward_only=True):
            if self._dp_balance:
                return self._balanced_logprobs(models, batch, with_entropy)
            for rows in split_even(len(batch), self.cfg.trainer.mini_batches):
                idx = torch.tensor(list(rows))
                lp, ent = sequence_logprobs(
                    models, batch.input_ids[idx], batch.prompt_lens[idx], batch.response_lens[idx],
                    temperature=self.cfg.rollout.temperature, with_entropy=with_entropy,
                    micro_batch_size=self.micro_batch_size(batch), chunk_tokens=self.cfg.model.logprob_chunk_tokens,
                    response_width=T, packs=self.packs(batch, idx),
                )
                lps.append(lp)
                ents.append(ent)
        return torch.cat(lps).cpu(), (torch.cat(ents).cpu() if with_entropy else None)

    @property
    def _dp_balance(self) -> bool:
        """Rows spread over data-parallel replicas by tokens (packing only: padded micro-batches keep slices)."""
        return self.cfg.trainer.packing and self.layout.dp > 1

    def _balanced_logprobs(self, models, batch: RolloutBatch, with_entropy: bool):
        """`logprobs` with the rows balanced over the replicas: each rank computes its share of every
        mini-batch, the rows go back to the replicas that own them."""
        from spro_mcore.models.logprobs import sequence_logprobs

        view = gather_replicas(batch, {}, self.layout.dp_rank)
        g = view.batch
        width = g.response_mask.shape[1]
        out = torch.zeros(2 if with_entropy else 1, len(g), width, dtype=torch.float32)
        for rows in view.mini_batch_rows(self.cfg.trainer.mini_batches):
            share = view.share(rows, self.cfg.trainer.micro_batch_tokens)
            if not share.rows:  # forward-only: nothing to run, no collective missed
                continue
            idx = torch.tensor(share.rows)
            lp, ent = sequence_logprobs(
                models, g.input_ids[idx], g.prompt_lens[idx], g.response_lens[idx],
                temperature=self.cfg.rollout.temperature, with_entropy=with_entropy,
                chunk_tokens=self.cfg.model.logprob_chunk_tokens, response_width=width, packs=share.packs,
            )
            out[0, idx] = lp.cpu()
            if with_entropy:
                out[1, idx] = ent.cpu()
        T = batch.response_mask.shape[1]
        lp = view.scatter_rows(out[0], T)
        return lp, (view.scatter_rows(out[1], T) if with_entropy else None)

    def _balanced_micro_batches(self, view: ReplicaView, share: Share):
        """(packed micro-batches, pack length, 1) of this rank's share of a mini-batch. A rank with no rows
        (a mini-batch with fewer rows than replicas) runs one row with an all-zero response mask: no loss,
        no gradient, but the same metric keys as the others."""
        from spro_mcore.models.logprobs import build_packs

        g = view.batch
        rows, packs = share.rows, share.packs
        fields = view.fields
        if not rows:
            rows, packs = [0], [[0]]
            fields = {**fields, "response_mask": torch.zeros_like(fields["response_mask"])}
        idx = torch.tensor(rows)
        micro, pack_len = build_packs(self.model, g.input_ids[idx], g.prompt_lens[idx], g.response_lens[idx],
                                      packs, {k: v[idx] for k, v in fields.items()})
        return [_to_device(mb, self.device) for mb in micro], pack_len, 1

    # ---- the PPO update ---------------------------------------------------------------------------
    def update(self, batch: RolloutBatch, advantages: torch.Tensor, old_logprobs: torch.Tensor,
               ref_logprobs: torch.Tensor) -> dict[str, float]:
        """`ppo_epochs` passes over `mini_batches` mini-batches, one optimizer step each. Returns the
        metrics of the loss (token-weighted over the whole batch) plus grad norm, LR and skipped updates."""
        from megatron.core.distributed import finalize_model_grads
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from spro_mcore.algo.policy_loss import ppo_policy_loss
        from spro_mcore.models.logprobs import make_forward_step

        a = self.cfg.algo
        loss_options = dict(
            loss_agg=a.loss_agg, norm_len=float(self.cfg.rollout.max_new_tokens), eps_low=a.eps_low,
            eps_high=a.eps_high, dual_clip_c=a.dual_clip_c, kl_coef=a.kl_coef, kl_estimator=a.kl_estimator,
            entropy_coef=a.entropy_coef, tis_cap=a.tis_cap, mis_level=a.mis, mis_low=a.mis_low, mis_high=a.mis_high,
        )
        fields = dict(advantages=advantages, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                      engine_logprobs=batch.engine_logprobs, response_mask=batch.response_mask.float())
        step_metrics: list[dict] = []
        grad_norms, skipped, imbalance = [], 0, []
        view = gather_replicas(batch, fields, self.layout.dp_rank) if self._dp_balance else None
        mini = (view.mini_batch_rows(self.cfg.trainer.mini_batches) if view is not None
                else [list(r) for r in split_even(len(batch), self.cfg.trainer.mini_batches)])
        for _ in range(self.cfg.trainer.ppo_epochs):
            for rows in mini:
                if view is not None:
                    share = view.share(rows, self.cfg.trainer.micro_batch_tokens)
                    imbalance.append(share.imbalance)
                    counts = _counts(view.fields["response_mask"][rows])  # the global batch is here: no reduce
                    micro, seq, mbs = self._balanced_micro_batches(view, share)
                else:
                    idx = torch.tensor(rows)
                    imbalance.append(self._slice_imbalance(batch.total_lens[idx]))
                    counts = self._global_counts(batch.response_mask[idx])
                    micro, seq, mbs = self._update_micro_batches(batch, fields, idx)

                def loss_fn(mb, logprobs, entropy, counts=counts):
                    # this micro-batch's additive share of the mini-batch loss (global counts)
                    loss, metrics = ppo_policy_loss(
                        logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"],
                        global_num_tokens=counts[0], global_num_seqs=counts[1], ref_logprobs=mb["ref_logprobs"],
                        entropy=entropy, engine_logprobs=mb["engine_logprobs"] if (a.tis or a.mis) else None, **loss_options,
                    )
                    return loss, torch.tensor(1, device=logprobs.device), metrics

                for m in self.model:
                    m.zero_grad_buffer()
                self.optimizer.zero_grad()
                with self._fp8(self.model, forward_only=False):
                    out = get_forward_backward_func()(
                        forward_step_func=make_forward_step(
                            loss_fn, temperature=self.cfg.rollout.temperature, with_entropy=True,
                            chunk_tokens=self.cfg.model.logprob_chunk_tokens,
                            response_width=(view.batch if view is not None else batch).response_mask.shape[1]),
                        data_iterator=iter(micro) if len(self.model) == 1 else [iter(micro) for _ in self.model],
                        model=self.model, num_microbatches=len(micro), seq_length=seq, micro_batch_size=mbs,
                        forward_only=False,
                    )
                # DP reduction, plus what megatron's training loop does after the schedule: the tied
                # embedding's first- and last-stage grads summed (PP > 1), norm grads over TP (sequence parallel)
                finalize_model_grads(self.model)
                if self._grads_finite():
                    _, grad_norm, _ = self.optimizer.step()
                    self.scheduler.step(increment=1)
                    grad_norms.append(float(grad_norm) if grad_norm is not None else float("nan"))
                else:
                    skipped += 1
                step_metrics.append(_sum_shares(out))
        # shares add up to each mini-batch's value; report the mean over the optimizer steps
        local = {k: sum(m[k] for m in step_metrics) / len(step_metrics) for k in (step_metrics[0] if step_metrics else {})}
        metrics = self._sum_over_replicas(local)
        metrics["train/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        metrics["train/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["train/skipped_updates"] = skipped
        if self.layout.dp > 1:
            metrics["perf/dp_token_imbalance"] = sum(imbalance) / len(imbalance)
        return metrics

    def _global_counts(self, response_mask: torch.Tensor) -> tuple[float, float]:
        """(tokens, sequences with >= 1 token) of this mini-batch over all data-parallel ranks."""
        t = torch.tensor(_counts(response_mask), dtype=torch.float64)
        collectives.all_reduce(t, "sum", group="dp")
        return float(t[0]), float(t[1])

    def _slice_imbalance(self, total_lens: torch.Tensor) -> float:
        """Max over mean of the real tokens the replicas hold in fixed row slices (1.0 without DP)."""
        if self.layout.dp == 1:
            return 1.0
        t = torch.tensor([float(total_lens.sum())], dtype=torch.float64)
        tokens = [float(x) for x in collectives.all_gather(t, group="dp")]
        mean = sum(tokens) / len(tokens)
        return max(tokens) / mean if mean else 1.0

    def _grads_finite(self) -> bool:
        local = all(bool(torch.isfinite(p.main_grad).all()) for p in self._params()
                    if getattr(p, "main_grad", None) is not None)
        return not collectives.any_rank(not local)

    def _sum_over_replicas(self, metrics: dict[str, float]) -> dict[str, float]:
        """Loss metrics are additive shares that exist on the last pipeline stage of each data-parallel
        replica: sum them over the replicas (once per replica, not per TP rank) onto every rank."""
        lay = self.layout
        if lay.world_size == 1:
            return metrics
        # pp is the outermost dimension of megatron's rank order: the last global rank is a last stage
        keys = collectives.broadcast_object(sorted(metrics), src_group_rank=lay.world_size - 1)
        contributes = lay.is_last_stage and lay.tp_rank == 0
        vals = torch.tensor([metrics.get(k, 0.0) if contributes else 0.0 for k in keys], dtype=torch.float64)
        collectives.all_reduce(vals, "sum")
        return {k: float(v) for k, v in zip(keys, vals)}

    # ---- state for checkpoints --------------------------------------------------------------------
    def sharded_state_dict(self, *, is_loading: bool = False) -> dict:
        return sharded_training_state(self.model, self.optimizer, self.scheduler, is_loading=is_loading)

    def load_state_dict(self, state: dict) -> None:
        load_training_state(self.model, self.optimizer, self.scheduler, state)

    @property
    def optimizer_steps(self) -> int:
        return int(self.scheduler.num_steps)

    def model_metadata(self) -> dict:
        from spro_mcore.models.mcore_checkpoint import FORMAT

        chunk, arch = self.model[0].module, self.arch
        return {
            "format": FORMAT, "version": 1, "architecture": (arch.config.get("architectures") or [arch.family])[0],
            "model_type": arch.family, "dtype": str(chunk.config.params_dtype).replace("torch.", ""),
            "padded_vocab_size": chunk.vocab_size, "vocab_size": arch.vocab_size, "hf_config": dict(arch.config),
        }


def _counts(response_mask: torch.Tensor) -> tuple[float, float]:
    """(tokens, sequences with >= 1 token) of a [B, T] response mask."""
    return float(response_mask.sum()), float((response_mask.sum(1) > 0).sum())


def _sum_shares(outputs: list[dict]) -> dict[str, float]:
    """Sum the per-micro-batch metric shares megatron's schedule returns (empty off the last stage)."""
    out: dict[str, float] = {}
    for m in outputs:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def _to_device(mb: dict, device: torch.device) -> dict:
    """A micro-batch's tensors on the model's device (other values, e.g. packing metadata, as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in mb.items()}


def _micro_batches(batch: RolloutBatch, fields: dict[str, torch.Tensor], idx: torch.Tensor, mbs: int,
                   device: torch.device, count_multiple: int = 1) -> list[dict]:
    """Micro-batches of exactly `mbs` rows (pipeline p2p needs one shape) on the model's `device`, as many as a
    multiple of `count_multiple` (the interleaved schedule's group size); padding rows have no response
    tokens and contribute nothing to the loss."""
    rows = idx.tolist()
    pad = (-len(rows)) % (mbs * count_multiple)
    out = []
    for start in range(0, len(rows) + pad, mbs):
        part = rows[start:start + mbs]
        n_real = len(part)
        part = part + [rows[-1]] * (mbs - n_real)
        sel = torch.tensor(part)
        mb = {
            "input_ids": batch.input_ids[sel], "prompt_lens": batch.prompt_lens[sel],
            "response_lens": batch.response_lens[sel].clone(),
        }
        for k, v in fields.items():
            mb[k] = v[sel].clone()
        if n_real < mbs:
            mb["response_lens"][n_real:] = 0
            mb["response_mask"][n_real:] = 0
        out.append({k: v.to(device) for k, v in mb.items()})
    return out
