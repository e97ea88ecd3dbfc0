"""`pav train`'s checkpoints, in <pav.verifier_dir>/checkpoints, on the trainer's protocol (`trainer.checkpoint`:
atomic step_<N> directories, `latest`, checkpoint.keep_last, resume per checkpoint.resume): one megatron-core
dist checkpoint of verifier + optimizer + LR schedule (`megatron_state`), the data order and every rank's RNG
states, so that a resumed run repeats an uninterrupted one bit for bit. A checkpoint belongs to one collection
(`dataset.collection_id`): one of another collection is refused, never resumed from or overwritten."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch

from spro_mcore.config.schema import Config
from spro_mcore.errors import UserError
from spro_mcore.models import dist_checkpoint
from spro_mcore.models.hf_checkpoint import CheckpointError
from spro_mcore.parallel.distributed import Layout
from spro_mcore.parallel.rng_state import capture_rng, reseed, restore_rng
from spro_mcore.trainer.checkpoint import files, protocol
from spro_mcore.trainer.policy.megatron_state import load_training_state, sharded_training_state

log = logging.getLogger("spro_mcore.pav")
KIND = "pav_verifier"


def checkpoint_dir(cfg: Config) -> Path:
    return Path(cfg.pav.verifier_dir) / "checkpoints"


def read_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / files.TRAINER_STATE, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a verified file that does not unpickle
        raise CheckpointError(f"checkpoint {ckpt}: cannot read {files.TRAINER_STATE} ({e})") from None


def check_owner(state: dict, ckpt: Path, collection: dict, cfg: Config) -> None:
    """One line unless checkpoint `ckpt` is a verifier checkpoint of this collection."""
    if state.get("kind") != KIND:
        raise UserError(f"{ckpt} is not a `pav train` checkpoint: use another pav.verifier_dir")
    if state["collection"]["id"] != collection["id"]:
        raise UserError(f"pav.verifier_dir={cfg.pav.verifier_dir} holds checkpoints of a verifier trained on another "
                        f"collection ({state['collection']['data_dir']}), not pav.data_dir={cfg.pav.data_dir}: "
                        "use another pav.verifier_dir (nothing was changed)")


class VerifierCheckpoints:
    def __init__(self, cfg: Config, layout: Layout, collection: dict):
        self.cfg, self.layout, self.collection = cfg, layout, collection
        self.dir = checkpoint_dir(cfg)
        self.last_saved_step: Optional[int] = None

    def restore(self, trainer) -> int:
        """Load the checkpoint chosen by checkpoint.resume into `trainer`; the step to continue from."""
        if self.layout.is_main:
            for p in files.remove_stale(self.dir):
                log.info("removed %s (left by an interrupted save)", p)
        resumed = protocol.choose(self.dir, self.cfg.checkpoint.resume, self.layout)
        step = self._load(resumed, trainer) if resumed is not None else 0
        protocol.set_aside_newer_than(self.dir, step, resumed, self.layout)
        if step:
            self.last_saved_step = step
        return step

    def _load(self, ckpt: Path, trainer) -> int:
        state = read_state(ckpt)
        check_owner(state, ckpt, self.collection, self.cfg)
        request = sharded_training_state(trainer.model, trainer.optimizer, trainer.scheduler, is_loading=True)
        load_training_state(trainer.model, trainer.optimizer, trainer.scheduler,
                            dist_checkpoint.load(request, str(ckpt)))
        trainer.load_state_dict(state["data"])
        if state["layout"] == self._layout_key():
            restore_rng(torch.load(files.rng_file(ckpt, self.layout.rank), weights_only=False))
        else:
            if self.layout.is_main:
                log.warning("checkpoint %s was written with layout %s, this run is %s: verifier and optimizer are "
                            "resharded; RNG streams are re-seeded", ckpt, state["layout"], self._layout_key())
            reseed(self.cfg.trainer.seed, state["step"])
        if self.layout.is_main:
            log.info("pav train: resumed from %s (step %d)", ckpt, state["step"])
        return int(state["step"])

    def save(self, trainer, step: int) -> Path:
        """Collective: checkpoint `step` (the state right after it), committed atomically."""
        partial = protocol.stage(self.dir, step, self.layout)
        start = time.perf_counter()
        dist_checkpoint.save(sharded_training_state(trainer.model, trainer.optimizer, trainer.scheduler,
                                                    is_loading=False), str(partial))
        (partial / files.RNG_DIR).mkdir(exist_ok=True)
        torch.save(capture_rng(), files.rng_file(partial, self.layout.rank))
        if self.layout.is_main:
            torch.save({"format": 1, "kind": KIND, "step": step, "data": trainer.state_dict(),
                        "collection": self.collection, "layout": self._layout_key(),
                        "seed": self.cfg.trainer.seed, "time": time.time()}, partial / files.TRAINER_STATE)
        final = protocol.commit(self.dir, step, partial, self.layout, self.cfg.checkpoint.keep_last, start)
        self.last_saved_step = step
        return final

    def _layout_key(self) -> dict:
        lay = self.layout
        return {"world_size": lay.world_size, "tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "cp": lay.cp,
                "vpp": self.cfg.parallel.vpp}
