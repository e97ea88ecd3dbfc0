"""`spro-mcore pav train`: fit the verifier to a collection's Q-hat targets (run under torchrun for TP/PP/DP).

Loss of one optimizer step: class-balanced binary cross-entropy on soft targets over every step of the
step's responses, sum_i w_i * BCE(logit_i, q_hat_i) / sum_i w_i with the sums over the WHOLE batch (all
data-parallel ranks): each micro-batch returns its additive share, megatron's schedule leaves it alone
(`calculate_per_token_loss`) and DDP sums the gradients, so the step equals the one-big-batch gradient.
Adam (megatron's optimizer, distributed when optim.use_distributed_optimizer) with optim.* warm-up and decay.
Held-out prompts (pav.heldout_fraction, the collection's last prompts) give BCE / Brier / AUC (overall and
within prompts) every pav.eval_interval steps; metrics go to <pav.verifier_dir>/metrics.jsonl, the verifier to
<pav.verifier_dir>, checkpoints (checkpoint.interval / keep_last / resume, and on SIGTERM / SIGINT, which stop
the run at a step boundary) to <pav.verifier_dir>/checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist

from spro_mcore.algo.step_split import canonical_splitter
from spro_mcore.config.schema import Config
from spro_mcore.errors import UserError
from spro_mcore.parallel import collectives
from spro_mcore.pav.batches import class_weights, make_batch, responses_from_rows

log = logging.getLogger("spro_mcore.pav")


def check_collection_matches(manifest: dict, cfg: Config, base_dir: str) -> None:
    """The collection must come from this base policy and splitter (one line naming the difference)."""
    from spro_mcore.pav.dataset import policy_fingerprint

    if manifest.get("policy_fingerprint") != policy_fingerprint(base_dir):
        raise UserError(f"pav.data_dir={cfg.pav.data_dir} was collected with the policy {manifest.get('policy')}, "
                        f"not model.path={cfg.model.path}: collect for this policy, or set model.path to that one")
    if manifest.get("splitter") != canonical_splitter(cfg.pav.splitter):
        raise UserError(f"pav.data_dir={cfg.pav.data_dir} was split into steps with pav.splitter="
                        f"{manifest.get('splitter')}, not {canonical_splitter(cfg.pav.splitter)}")


def split_heldout(responses, fraction: float):
    prompts = sorted({r.prompt_index for r in responses})
    n_held = max(1, math.ceil(fraction * len(prompts)))
    if n_held >= len(prompts):
        raise UserError(f"the collection has {len(prompts)} prompts: too few to hold out "
                        f"pav.heldout_fraction={fraction} and still train; collect more (pav.num_prompts)")
    held = set(prompts[-n_held:])
    return [r for r in responses if r.prompt_index not in held], [r for r in responses if r.prompt_index in held]


class VerifierTrainer:
    def __init__(self, cfg: Config, base_dir: str, train, heldout):
        from spro_mcore.pav.verifier import build_verifier
        from spro_mcore.trainer.policy.megatron_optimizer import training_wrappers

        self.cfg = cfg
        chunks, self.arch, _ = build_verifier(base_dir, cfg.model, seed=cfg.trainer.seed)
        self.model, self.optimizer, self.scheduler = training_wrappers(chunks, cfg, total_updates=cfg.pav.train_steps)
        self.train, self.heldout = train, heldout
        self.weights = class_weights(train)
        everything = train + heldout
        self.length = max(len(r.input_ids) for r in everything)
        self.steps = max(len(r.read_pos) for r in everything)
        self.mbs = max(1, cfg.trainer.micro_batch_tokens // self.length)
        self._order: list[int] = []
        self._epoch = 0

    def _next_batch(self):
        """The step's responses (the same on every rank; a fresh seeded permutation every epoch)."""
        out = []
        while len(out) < self.cfg.pav.batch_size:
            if not self._order:
                self._order = list(range(len(self.train)))
                random.Random(self.cfg.trainer.seed + self._epoch).shuffle(self._order)
                self._epoch += 1
            out.append(self.train[self._order.pop()])
        return out

    def state_dict(self) -> dict:
        """The data position (the only state besides weights, optimizer, schedule and RNG)."""
        return {"order": list(self._order), "epoch": self._epoch}

    def load_state_dict(self, state: dict) -> None:
        self._order, self._epoch = list(state["order"]), int(state["epoch"])

    def step(self) -> dict[str, float]:
        from megatron.core import parallel_state as mpu
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from spro_mcore.pav.verifier import make_value_forward_step, micro_batches

        responses = self._next_batch()
        full = make_batch(responses, length=self.length, steps=self.steps, weights=self.weights)
        total_weight = float(full["weights"].sum())
        dp, rank = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()
        per = -(-len(responses) // dp)
        mine = {k: v[rank * per:(rank + 1) * per] for k, v in full.items()}
        if mine["input_ids"].shape[0] == 0:  # more replicas than responses: a row that weighs nothing
            mine = {k: v[:1].clone() for k, v in full.items()}
            mine["weights"].zero_()
            mine["read_mask"].zero_()
        micro = micro_batches(mine, min(self.mbs, mine["input_ids"].shape[0]))

        def loss_fn(mb, logits):
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, mb["targets"], reduction="none")
            loss = (bce * mb["weights"] * mb["read_mask"]).sum() / total_weight
            return loss, torch.tensor(1), {"train/loss": loss.detach()}

        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        out = get_forward_backward_func()(
            forward_step_func=make_value_forward_step(loss_fn),
            data_iterator=iter(micro) if len(self.model) == 1 else [iter(micro) for _ in self.model],
            model=self.model, num_microbatches=len(micro), seq_length=self.length,
            micro_batch_size=micro[0]["input_ids"].shape[0], forward_only=False)
        for m in self.model:
            m.finish_grad_sync()
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        share = sum(float(o["train/loss"]) for o in out) if out else 0.0
        contributes = mpu.is_pipeline_last_stage() and mpu.get_tensor_model_parallel_rank() == 0
        loss = torch.tensor([share if contributes else 0.0], dtype=torch.float64)
        collectives.all_reduce(loss, "sum")
        return {"train/loss": float(loss), "train/grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                "train/lr": self.optimizer.param_groups[0]["lr"]}

    def evaluate(self) -> dict[str, float]:
        from spro_mcore.pav.metrics import verifier_metrics
        from spro_mcore.pav.verifier import predict_logits

        batch = make_batch(self.heldout, length=self.length, steps=self.steps)
        logits = predict_logits(self.model, batch, micro_batch_size=min(self.mbs, len(self.heldout)))
        prompt = torch.tensor([r.prompt_index for r in self.heldout])[:, None].expand_as(batch["read_mask"])
        return verifier_metrics(logits, batch["targets"], batch["outcome"], batch["read_mask"], prompt)

    def chunks(self):
        return [m.module for m in self.model]


def check_verifier_dir(cfg: Config, manifest: dict) -> None:
    """Refuse (writing nothing) a pav.verifier_dir that holds a verifier, or checkpoints, of another collection,
    or a model that is not a verifier: training there would overwrite it."""
    from spro_mcore.pav.checkpoint import check_owner, checkpoint_dir, read_state
    from spro_mcore.pav.dataset import collection_id
    from spro_mcore.pav.verifier import VERIFIER_CONFIG
    from spro_mcore.trainer.checkpoint import files

    out = Path(cfg.pav.verifier_dir)
    ours = collection_id(manifest)
    if (out / VERIFIER_CONFIG).is_file():
        try:
            info = json.loads((out / VERIFIER_CONFIG).read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{out / VERIFIER_CONFIG}: not valid JSON ({e.msg}); use another pav.verifier_dir") from None
        theirs = info.get("collection_id")
        other = theirs != ours if theirs else info.get("data_dir") != str(Path(cfg.pav.data_dir).resolve())
        if other:
            raise UserError(f"pav.verifier_dir={cfg.pav.verifier_dir} already holds a verifier trained on another "
                            f"collection ({info.get('data_dir') or 'not recorded'}), not pav.data_dir={cfg.pav.data_dir}: "
                            "use another pav.verifier_dir (it is left as it is)")
    elif out.is_dir() and any(out.glob("*.safetensors")) and not checkpoint_dir(cfg).is_dir():  # not a killed export
        raise UserError(f"pav.verifier_dir={cfg.pav.verifier_dir} holds a model that is not a PAV verifier (no "
                        f"{VERIFIER_CONFIG}); training would overwrite it: use another pav.verifier_dir")
    if cfg.checkpoint.resume == "auto":
        newest = files.complete_checkpoints(checkpoint_dir(cfg))
        if newest:
            check_owner(read_state(newest[0]), newest[0], {"id": ours}, cfg)


def load_training_data(cfg: Config):
    """(base policy dir, manifest, train responses, held-out responses), or one line saying what is wrong.
    Needs no process group: bad input is refused before anything starts."""
    from spro_mcore.pav.dataset import read_collection
    from spro_mcore.trainer.setup import resolve_model_path

    if cfg.checkpoint.async_save:
        raise UserError("checkpoint.async_save=true: `pav train` saves its checkpoints synchronously (they are "
                        "small); set checkpoint.async_save=false")
    base_dir = resolve_model_path(cfg.model.path)
    manifest, table = read_collection(cfg.pav.data_dir)
    check_collection_matches(manifest, cfg, base_dir)
    check_verifier_dir(cfg, manifest)
    train, heldout = split_heldout(responses_from_rows(table.to_pylist()), cfg.pav.heldout_fraction)
    return base_dir, manifest, train, heldout


def train_verifier(cfg: Config, layout) -> dict:
    """Train (resuming from <pav.verifier_dir>/checkpoints per checkpoint.resume), then export the verifier."""
    from spro_mcore.pav.checkpoint import VerifierCheckpoints
    from spro_mcore.pav.dataset import collection_id
    from spro_mcore.pav.verifier import export_verifier
    from spro_mcore.trainer.checkpoint.preemption import PreemptionFlag, any_rank
    from spro_mcore.trainer.metrics import MetricsLogger, read_metric_rows

    base_dir, manifest, train, heldout = load_training_data(cfg)
    trainer = VerifierTrainer(cfg, base_dir, train, heldout)
    out = Path(cfg.pav.verifier_dir)
    collection = {"id": collection_id(manifest), "data_dir": str(Path(cfg.pav.data_dir).resolve())}
    ckpt = VerifierCheckpoints(cfg, layout, collection)
    first = ckpt.restore(trainer) + 1
    logger = MetricsLogger(out, total_steps=cfg.pav.train_steps, enabled=layout.is_main, tensorboard=False,
                           progress_bar=False, start_step=first - 1)
    last: dict = {}
    start = time.monotonic()
    flag = PreemptionFlag()  # SIGTERM / SIGINT: stop at a step boundary with a checkpoint, exit 0
    flag.install()
    try:
        for step in range(first, cfg.pav.train_steps + 1):
            metrics = trainer.step()
            every = cfg.pav.eval_interval
            if step == cfg.pav.train_steps or (every and step % every == 0):
                metrics.update(trainer.evaluate())
            metrics["time/elapsed"] = time.monotonic() - start
            last = logger.log(step, metrics)
            if layout.is_main and "eval/bce" in metrics:
                log.info("pav train: step %d loss %.4f held-out bce %.4f brier %.4f auc %.3f", step,
                         metrics["train/loss"], metrics["eval/bce"], metrics["eval/brier"], metrics["eval/auc_outcome"])
            interval = cfg.checkpoint.interval
            if step == cfg.pav.train_steps or (interval and step % interval == 0):
                ckpt.save(trainer, step)
            if step < cfg.pav.train_steps and any_rank(flag.signum is not None):
                path = ckpt.save(trainer, step) if ckpt.last_saved_step != step else ckpt.dir / f"step_{step}"
                if layout.is_main:
                    log.warning("pav train: stopped at step %d on request; checkpoint %s; rerun the same command "
                                "to resume", step, path)
                raise SystemExit(0)
    finally:
        flag.uninstall()
        logger.close()
    if not last:  # resumed from the final checkpoint (killed during the export): its metrics are on file
        rows = read_metric_rows(out / "metrics.jsonl")[0] if layout.is_main else None
        last = collectives.broadcast_object(rows[-1] if rows else {})
    info = {"base_policy": manifest.get("policy"), "base_policy_fingerprint": manifest.get("policy_fingerprint"),
            "splitter": manifest.get("splitter"), "prover": manifest.get("prover"),
            "prover_k": manifest.get("prover_k"), "data_dir": collection["data_dir"],
            "collection_id": collection["id"],
            "train_steps": cfg.pav.train_steps, "train_responses": len(train), "heldout_responses": len(heldout),
            "final_metrics": {k: v for k, v in last.items() if k.startswith(("eval/", "train/loss"))}}
    export_verifier(trainer.chunks(), trainer.arch, base_dir, str(out), info, write=layout.is_main)
    return last


def train_main(config_path, overrides) -> int:
    from spro_mcore.parallel import destroy
    from spro_mcore.trainer.run import start

    from spro_mcore.config import load_config

    load_training_data(load_config(config_path, overrides))  # refuse bad input before any process group
    cfg, layout = start(config_path, overrides)
    try:
        last = train_verifier(cfg, layout)
    finally:
        destroy()
    if layout.is_main:
        print("pav train: " + json.dumps({k: v for k, v in last.items() if k.startswith(("eval/", "train/loss", "step"))})
              + f" -> {cfg.pav.verifier_dir}")
    return 0
