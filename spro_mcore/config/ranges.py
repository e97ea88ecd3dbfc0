"""Value ranges and cross-field checks of the config that `schema.POSITIVE` / `NON_NEGATIVE` / `CHOICES`
cannot say: open and half-open intervals, "-1 or >= 1", and fields that must agree with each other.

Each check names its key(s) and the accepted range in one line, so a bad value costs a second at start-up
instead of a crash (or a silently wrong run) later.
"""

from __future__ import annotations

import math
from typing import Callable
from urllib.parse import urlsplit

from spro_mcore.config.schema import Config
from spro_mcore.errors import UserError


class RangeError(UserError, ValueError):
    """A config value outside its range, or two fields that disagree."""


# key -> (accepts(value), the range in words)
RANGES: dict[str, tuple[Callable[[object], bool], str]] = {
    "optim.adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.adam_eps": (lambda v: v > 0, "> 0"),
    "optim.min_lr": (lambda v: v >= 0, ">= 0"),
    "optim.max_nonfinite_in_row": (lambda v: v >= 0, ">= 0 (0 = never stop)"),
    "rollout.top_p": (lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
    "rollout.top_k": (lambda v: v == -1 or v >= 1, "-1 (off) or >= 1"),
    "rollout.request_timeout_s": (lambda v: v > 0, "> 0 seconds"),
    "rollout.max_retries": (lambda v: v >= 0, ">= 0"),
    "rollout.kv_cache_memory_bytes": (lambda v: v > 0, "> 0 bytes"),
    "rollout.gpu_memory_utilization": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "rollout.engine_tp": (lambda v: v >= 1, ">= 1"),
    "algo.eps": (lambda v: v > 0, "> 0"),
    "algo.msa_ratio": (lambda v: v >= 0, ">= 0"),
    "algo.dual_clip_c": (lambda v: v is None or v > 1, "null (off) or > 1"),
    "data.reward_timeout_s": (lambda v: v > 0, "> 0 seconds (a verifier without time limit could hang the run)"),
    "trainer.eval_n": (lambda v: v >= 1, ">= 1"),
    "trainer.eval_temperature": (lambda v: v > 0, "> 0"),
    "parallel.timeout_minutes": (lambda v: v > 0, "> 0"),
    "parallel.vpp": (lambda v: v is None or v >= 1, "null or >= 1"),
}


def _get(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def check_ranges(cfg: Config) -> None:
    for key, (accepts, words) in RANGES.items():
        value = _get(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise RangeError(f"config key '{key}' = {value} must be a finite number {words}")
        if not accepts(value):
            raise RangeError(f"config key '{key}' = {value} is out of range: must be {words}")
    o, t = cfg.optim, cfg.trainer
    for key in ("optim.lr", "algo.beta", "algo.eps_low", "algo.eps_high", "rollout.temperature", "optim.clip_grad",
                "algo.pav_alpha"):
        value = _get(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise RangeError(f"config key '{key}' = {value} must be a finite number")
    if o.min_lr > o.lr:
        raise RangeError(f"optim.min_lr = {o.min_lr} is above optim.lr = {o.lr}: the floor of the schedule must be "
                         "at most the peak")
    updates = t.total_steps * t.mini_batches * t.ppo_epochs
    if o.warmup_steps > updates:
        raise RangeError(f"optim.warmup_steps = {o.warmup_steps} is more than the run's {updates} optimizer steps "
                         "(trainer.total_steps x trainer.mini_batches x trainer.ppo_epochs): the peak LR is never reached")
    if cfg.algo.eps_low >= 1:
        raise RangeError(f"config key 'algo.eps_low' = {cfg.algo.eps_low} must be < 1 (the clip range is "
                         "[1 - eps_low, 1 + eps_high])")
    for url in cfg.rollout.server_urls:
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RangeError(f"rollout.server_urls: {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000)")
    check_samples_per_step(cfg, cfg.parallel.dp or 1)


def check_samples_per_step(cfg: Config, dp: int) -> None:
    """Each data-parallel replica splits its samples of a step into trainer.mini_batches optimizer steps; with
    fewer samples than mini-batches the run would take fewer optimizer steps than its LR schedule was sized for."""
    prompts = cfg.data.prompts_per_step // dp if cfg.data.prompts_per_step % dp == 0 else cfg.data.prompts_per_step / dp
    samples = prompts * cfg.rollout.n
    if cfg.trainer.mini_batches > samples:
        per = f" per data-parallel replica (dp={dp})" if dp > 1 else ""
        raise RangeError(
            f"trainer.mini_batches = {cfg.trainer.mini_batches} is more than the {samples:g} samples of a step{per} "
            f"(data.prompts_per_step x rollout.n{' / dp' if dp > 1 else ''}): lower trainer.mini_batches or "
            "raise data.prompts_per_step")
