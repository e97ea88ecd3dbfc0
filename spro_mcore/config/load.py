"""Load a Config from YAML recipes and `section.key=value` overrides, and validate it.

Every failure is a ConfigError whose message is one line naming the key (and, for a misspelt key, the
closest valid one), so the CLI can print it and exit non-zero.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from spro_mcore.algo.step_split import splitter_pattern
from spro_mcore.config.ranges import RangeError, check_ranges, check_samples_per_step
from spro_mcore.config.schema import CHOICES, NON_NEGATIVE, POSITIVE, Config
from spro_mcore.config.unwired import refuse_unwired
from spro_mcore.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad configuration: the message says which key and what to do."""


def _schema_keys(cls=Config, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the schema -> its dataclass field type."""
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys[name] = type(default)
            keys.update(_schema_keys(type(default), name + "."))
        else:
            keys[name] = f.type
    return keys


SCHEMA_KEYS = _schema_keys()


def _unknown_key_error(key: str) -> ConfigError:
    head = key.split(".", 1)[0]
    if head not in SCHEMA_KEYS:  # the section itself is unknown
        sections = [k for k in SCHEMA_KEYS if "." not in k]
        close = difflib.get_close_matches(head, sections, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else "; sections: " + ", ".join(sections)
        return ConfigError(f"unknown config section '{head}' in '{key}'{hint}")
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    candidates = [k for k in SCHEMA_KEYS if k.startswith(section)] or list(SCHEMA_KEYS)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys under '{section or '.'}': " + ", ".join(
        sorted(k for k in candidates if k.count(".") == key.count("."))
    )
    return ConfigError(f"unknown config key '{key}'{hint}")


def _check_keys(tree: Any, prefix: str = "") -> None:
    if not isinstance(tree, dict):
        return
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if key not in SCHEMA_KEYS:
            raise _unknown_key_error(key)
        section_type = SCHEMA_KEYS[key]
        if isinstance(section_type, type) and dataclasses.is_dataclass(section_type):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section; give its fields, e.g. {key}.<field>=...")
            _check_keys(v, key + ".")


def _parse_overrides(overrides: Iterable[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        key, _, _ = item.partition("=")
        key = key.strip().lstrip("+")
        if key not in SCHEMA_KEYS:
            raise _unknown_key_error(key)
    try:
        tree = OmegaConf.to_container(OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides: {e}") from None
    return tree


def _off_word(layer: dict) -> dict:
    """YAML 1.1 reads a bare `off` as false: give it back to the choice fields that spell a value `off`
    (trainer.async_mode=off), so the documented word works on the command line and in a file."""
    for key, choices in CHOICES.items():
        section, _, name = key.partition(".")
        if "off" in choices and isinstance(layer.get(section), dict) and layer[section].get(name) is False:
            layer[section][name] = "off"
    return layer


def _merge(base, layer: dict, origin: str):
    layer = _off_word(layer)
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        if key in SCHEMA_KEYS:
            expected = getattr(SCHEMA_KEYS[key], "__name__", str(SCHEMA_KEYS[key]))
            got = OmegaConf.select(OmegaConf.create(layer), key, default="?")
            raise ConfigError(f"config key '{key}' ({origin}): expected {expected}, got {got!r}") from None
        raise ConfigError(f"config ({origin}): {str(e).splitlines()[0]}") from None


def load_config(path: Optional[str | Path] = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- YAML file (optional) <- command-line overrides, typed and validated (world-size-free
    checks; call `validate_world_size` once torch.distributed is up)."""
    overrides = list(overrides)
    cfg = OmegaConf.structured(Config)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = _read_yaml(path)
        _check_keys(raw)
        cfg = _merge(cfg, raw, str(path))
    if overrides:
        cfg = _merge(cfg, _parse_overrides(overrides), "command line")
    obj: Config = OmegaConf.to_object(cfg)
    validate(obj)
    return obj


def _read_yaml(path: Path) -> dict:
    """The file's mapping of sections; a syntax error is named with its line, any other top level refused."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        raw = OmegaConf.to_container(OmegaConf.create(text)) if text.strip() else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {where}: not valid YAML ({problem})") from None
    except Exception as e:  # noqa: BLE001 - omegaconf's own refusals (e.g. a top-level list)
        raw = e
    if not isinstance(raw, dict):
        kind = "a list" if isinstance(raw, (list, Exception)) else type(raw).__name__
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections (model:, trainer:, "
                          f"...), got {kind}")
    return raw


def _get(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def validate(cfg: Config) -> None:
    """Checks that need no running process group."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise ConfigError(f"config key '{key}' = {value!r} is not one of: {shown}")
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {_get(cfg, key)}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {_get(cfg, key)}")
    try:
        check_ranges(cfg)  # value ranges and cross-field checks of config/ranges.py
    except RangeError as e:
        raise ConfigError(str(e)) from None
    if cfg.rollout.mode == "server" and not cfg.rollout.server_urls:
        raise ConfigError("rollout.mode=server needs rollout.server_urls (e.g. rollout.server_urls=[http://127.0.0.1:8000])")
    if cfg.rollout.engine == "hf" and cfg.rollout.mode != "colocated":
        raise ConfigError("rollout.engine=hf runs in the trainer process: set rollout.mode=colocated")
    if cfg.rollout.engine == "sglang" and cfg.rollout.mode != "server":
        raise ConfigError("rollout.engine=sglang talks to SGLang servers: set rollout.mode=server and rollout.server_urls")
    if cfg.data.source == "file" and not cfg.data.train_path:
        raise ConfigError("data.source=file needs data.train_path (a .jsonl or .parquet file)")
    if cfg.model.fp8 is not None and cfg.model.transformer_impl == "local":
        raise ConfigError("model.fp8 needs Transformer Engine: set model.transformer_impl=transformer_engine (or auto)")
    if cfg.parallel.sequence_parallel and cfg.parallel.tp == 1:
        raise ConfigError("parallel.sequence_parallel needs parallel.tp > 1")
    a = cfg.algo
    if a.tis and a.mis is not None:
        raise ConfigError("algo.tis and algo.mis are two corrections of the same ratio: choose one")
    if a.mis is not None and not a.mis_high > a.mis_low:
        raise ConfigError(f"algo.mis_high = {a.mis_high} must be > algo.mis_low = {a.mis_low}")
    if a.old_logprobs == "engine" and (a.tis or a.mis is not None):
        raise ConfigError("algo.old_logprobs=engine makes the trainer/engine ratio 1 by construction: algo.tis and "
                          "algo.mis need algo.old_logprobs=recompute (with engine log-probs the PPO ratio itself "
                          "is against the engine)")
    if not 0 < cfg.pav.heldout_fraction < 1:
        raise ConfigError(f"config key 'pav.heldout_fraction' must be in (0, 1), got {cfg.pav.heldout_fraction}")
    try:
        splitter_pattern(cfg.pav.splitter)
    except ValueError as e:
        raise ConfigError(f"config key 'pav.splitter': {e}") from None
    if a.pav_splitter:
        try:
            splitter_pattern(a.pav_splitter)
        except ValueError as e:
            raise ConfigError(f"config key 'algo.pav_splitter': {e}") from None
    if a.estimator == "pav" and a.pav_source == "verifier" and not a.pav_path:
        raise ConfigError("algo.estimator=pav with algo.pav_source=verifier needs algo.pav_path (a `spro-mcore pav "
                          "train` output directory), or set algo.pav_source=mc")
    if a.estimator == "pav" and a.pav_source == "verifier" and a.pav_prover != "initial":
        raise ConfigError("algo.pav_prover=current needs algo.pav_source=mc: a trained verifier predicts the Q of the "
                          "policy it was trained for (the initial one), not of the policy being trained")
    if cfg.rollout.n < 2 and cfg.algo.estimator in ("spro", "grpo", "spro_balanced", "pav"):
        raise ConfigError(f"rollout.n = {cfg.rollout.n}: group-relative estimators need at least 2 samples per prompt")
    refuse_unwired(cfg)


def validate_world_size(cfg: Config, world_size: int) -> int:
    """TP x PP x CP x DP must equal the world size; returns the data-parallel size (inferring dp=0)."""
    p = cfg.parallel
    model_parallel = p.tp * p.pp * p.cp
    if world_size % model_parallel != 0:
        raise ConfigError(
            f"world size {world_size} is not divisible by parallel.tp x parallel.pp x parallel.cp = "
            f"{p.tp} x {p.pp} x {p.cp} = {model_parallel}"
        )
    dp = world_size // model_parallel
    try:
        check_samples_per_step(cfg, p.dp or dp)
    except RangeError as e:
        raise ConfigError(str(e)) from None
    if p.dp not in (0, dp):
        raise ConfigError(
            f"parallel.tp x parallel.pp x parallel.cp x parallel.dp = {p.tp} x {p.pp} x {p.cp} x {p.dp} = "
            f"{model_parallel * p.dp} does not match the world size {world_size} (set parallel.dp={dp} or 0)"
        )
    r = cfg.rollout
    if r.engine == "vllm" and r.mode == "colocated" and world_size > 1 and p.tp % r.engine_tp:
        # vLLM groups consecutive ranks into engines: each must stay inside one tensor-parallel group (one replica)
        raise ConfigError(f"rollout.engine_tp = {r.engine_tp} must divide parallel.tp = {p.tp} for colocated vLLM "
                          "in a multi-rank job (each engine lives inside one tensor-parallel group)")
    if (cfg.algo.estimator == "pav" and cfg.algo.pav_source == "mc" and r.engine == "vllm" and r.mode == "colocated"
            and world_size > 1):
        # the mc prover's continuations run on the engine of each group's first rank only
        raise ConfigError("algo.pav_source=mc is not wired for colocated vLLM on several ranks: use rollout.engine=hf, "
                          "rollout.mode=server, one process, or algo.pav_source=verifier")
    return dp


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
