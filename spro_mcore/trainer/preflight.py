"""Start-up checks of everything a run reads and writes, before any heavy import, process group or model:
a bad path, model folder, data file, reward plugin, resume target, output folder or engine server URL costs
seconds and gives one line naming the culprit (its config key, file and line, URL), instead of a traceback
minutes later.

The checks only read (the output folder's parent may be created); they never change an existing file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from spro_mcore.config.schema import Config
from spro_mcore.errors import UserError

MCORE_METADATA = "spro_mcore_model.json"  # = models.mcore_checkpoint.METADATA (that module imports torch)
# any one of these makes a tokenizer transformers can load (fast, sentencepiece, BPE, WordPiece)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


class PreflightError(UserError):
    """A path or plugin named by the config that cannot work."""


def preflight(cfg: Config, *, training: bool = True) -> None:
    if training:
        check_output_dir(cfg)
    check_model_dir(cfg.model.path, "model.path", tokenizer=True)
    if cfg.model.reference_path:
        check_model_dir(cfg.model.reference_path, "model.reference_path", tokenizer=False)
    check_data_files(cfg)
    if training:
        check_pav_verifier(cfg)
    check_reward_fn(cfg.data.reward_fn)
    check_servers(cfg)
    if training:
        check_resume(cfg)
        check_appended_files(Path(cfg.trainer.output_dir))


def check_output_dir(cfg: Config) -> None:
    for key, value in (("trainer.output_dir", cfg.trainer.output_dir), ("checkpoint.dir", cfg.checkpoint.dir)):
        if not value:
            continue
        p = Path(value)
        if p.exists() and not p.is_dir():
            raise PreflightError(f"{key}={value} is a file, not a folder: give a folder for the run's outputs")
        parent = next((q for q in [p, *p.parents] if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise PreflightError(f"{key}={value}: {parent} is a file, not a folder")
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise PreflightError(f"{key}={value}: no permission to write in {parent}")


def _resolve(path: str, key: str) -> Path:
    from spro_mcore.models.model_path import resolve_model_path

    return Path(resolve_model_path(path, key=key))


def check_model_dir(path: str, key: str, *, tokenizer: bool) -> None:
    """An HF folder with a readable config.json, safetensors weights (and, for the policy, tokenizer files),
    or a spro-mcore Megatron checkpoint with its metadata (and, for the policy, its HF template folder)."""
    d = _resolve(path, key)
    if (d / MCORE_METADATA).is_file():
        meta = _read_json(d / MCORE_METADATA, key)
        template = meta.get("hf_template")
        if tokenizer and not (template and Path(template).is_dir()):
            raise PreflightError(f"{key}={path}: a Megatron checkpoint whose HF template folder {template!r} (config "
                                 "and tokenizer) is gone; convert it with `spro-mcore convert mcore-to-hf`")
        return
    names = set(os.listdir(d))
    if not names:
        raise PreflightError(f"{key}={path} is an empty folder: expected an HF model (config.json, "
                             "model.safetensors, tokenizer files) or a Megatron checkpoint")
    if "config.json" not in names:
        raise PreflightError(f"{key}={path} has no config.json: not an HF model folder (nor a Megatron checkpoint)")
    config = _read_json(d / "config.json", key)
    from spro_mcore.models.hf_arch import UnsupportedModelError, parse_hf_config

    try:
        parse_hf_config(config)
    except UnsupportedModelError as e:
        raise PreflightError(f"{key}={path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise PreflightError(f"{key}={path}: {d / 'config.json'} is incomplete ({type(e).__name__}: {e})") from None
    if not names & set(WEIGHTS):
        raise PreflightError(f"{key}={path} has no model.safetensors (or its index): only safetensors weights are "
                             "read")
    if tokenizer and not names & set(TOKENIZER_FILES):
        raise PreflightError(f"{key}={path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}): copy "
                             "them from the model the weights came from")


def _read_json(path: Path, key: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PreflightError(f"{key}: {path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise PreflightError(f"{key}: {path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except OSError as e:
        raise PreflightError(f"{key}: cannot read {path} ({e.strerror})") from None
    if not isinstance(value, dict):
        raise PreflightError(f"{key}: {path} must hold a JSON object, got {type(value).__name__}")
    return value


def check_pav_verifier(cfg: Config) -> None:
    """algo.estimator=pav with the verifier source: a trained verifier, for this base policy and splitter."""
    a = cfg.algo
    if a.estimator != "pav" or a.pav_source != "verifier":
        return
    from spro_mcore.algo.step_split import canonical_splitter
    from spro_mcore.pav.dataset import policy_fingerprint

    if not Path(a.pav_path).is_dir():
        raise PreflightError(f"algo.pav_path={a.pav_path} does not exist: give a `spro-mcore pav train` output directory")
    # = pav.verifier.VERIFIER_CONFIG / HEAD_FILE (that module imports torch)
    if not (Path(a.pav_path) / "pav_verifier.json").is_file() or not (Path(a.pav_path) / "value_head.safetensors").is_file():
        raise PreflightError(f"algo.pav_path={a.pav_path} is not a PAV verifier (no pav_verifier.json and "
                             f"value_head.safetensors): train one with `spro-mcore pav train`")
    info = _read_json(Path(a.pav_path) / "pav_verifier.json", "algo.pav_path")
    policy = _resolve(cfg.model.path, "model.path")
    if (policy / MCORE_METADATA).is_file():
        return  # a Megatron checkpoint (a resumed policy) has no HF fingerprint to compare
    if info.get("base_policy_fingerprint") != policy_fingerprint(policy):
        raise PreflightError(f"algo.pav_path={a.pav_path}: the verifier was trained for the policy "
                             f"{info.get('base_policy')}, not model.path={cfg.model.path} (train one for it with "
                             f"`spro-mcore pav collect` + `pav train`)")
    if a.pav_splitter and canonical_splitter(a.pav_splitter) != info.get("splitter"):
        raise PreflightError(f"algo.pav_path={a.pav_path}: the verifier reads steps split by {info.get('splitter')}, "
                             f"not algo.pav_splitter={canonical_splitter(a.pav_splitter)} (leave algo.pav_splitter "
                             f"empty to use the verifier's own)")


def check_data_files(cfg: Config) -> None:
    """Every row of the prompt files, checked as training will read them (file, line and field named)."""
    if cfg.data.source != "file":
        return
    from spro_mcore.data.rows import DataError, read_prompt_rows

    d = cfg.data
    for key, path in (("data.train_path", d.train_path), ("data.eval_path", d.eval_path)):
        if not path:
            continue
        try:
            read_prompt_rows(path, prompt_key=d.prompt_key, messages_key=d.messages_key,
                             answer_key=d.answer_key)
        except DataError as e:
            raise PreflightError(f"{key}: {e}") from None


def check_reward_fn(name: str) -> None:
    from spro_mcore.rewards.registry import resolve_reward_fn

    try:
        resolve_reward_fn(name)
    except ValueError as e:
        raise PreflightError(f"data.reward_fn: {e}") from None


def check_resume(cfg: Config) -> None:
    resume = cfg.checkpoint.resume
    if resume in ("auto", "never"):
        return
    p = Path(resume)
    if p.is_symlink() and not p.exists():
        raise PreflightError(f"checkpoint.resume={resume} is a broken symbolic link (to {os.readlink(p)})")
    if not p.exists():
        raise PreflightError(f"checkpoint.resume={resume}: no such checkpoint (give a step_<N> folder, a folder of "
                             "checkpoints, auto or never)")
    if not p.is_dir():
        raise PreflightError(f"checkpoint.resume={resume} is a file: give a step_<N> folder or a folder of checkpoints")


def check_appended_files(out: Path) -> None:
    """The files a resumed run appends to must be readable up to (at most) a torn last line."""
    from spro_mcore.trainer.metrics import read_metric_rows

    if (out / "metrics.jsonl").is_file():
        read_metric_rows(out / "metrics.jsonl")  # raises on a bad line other than a torn last one


def check_servers(cfg: Config) -> None:
    """rollout.mode=server: every server answers its health check (a refused connection fails after the
    retry policy, naming the URL; a server still loading is waited for, logged), before any model is built."""
    r = cfg.rollout
    if r.mode != "server":
        return
    from spro_mcore.rollout.server_pool import ServerPool

    pool = ServerPool(r.server_urls, f"{r.engine} server", timeout_s=r.request_timeout_s, max_retries=r.max_retries)
    try:
        pool.wait_ready("/health")
    finally:
        pool.close()
