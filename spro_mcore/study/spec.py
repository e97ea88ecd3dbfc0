"""The study file: its schema, validation, and the cells it expands into.

    base: configs/quickstart_cpu.yaml        # trainer config every cell starts from
    output_dir: outputs/studies/beta          # runs go to <output_dir>/runs/<cell>/seed_<seed>/
    seeds: [1, 2, 3]                          # each becomes trainer.seed
    overrides: {trainer.total_steps: 60}      # section.key applied to every cell
    metric: eval/acc                          # what cells are ranked by (default): held-out greedy accuracy,
                                              # or eval/sampled_acc (pass@1 at the rollout temperature; eval_n >= 2)
    grid:                                     # section.key -> values, crossed into cells ...
      algo.estimator: [grpo, spro]
      algo.beta: [0.1, 1.0]
    # ... or a list of named override mappings:
    # grid: [{name: grpo, algo.estimator: grpo}, {name: spro_b1, algo.estimator: spro, algo.beta: 1.0}]

Every cell's trainer config is loaded and validated before any run starts, so a misspelt key or a bad
value fails at once with the trainer's own one-line message.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spro_mcore.config import load_config
from spro_mcore.config.load import SCHEMA_KEYS, ConfigError, _unknown_key_error

STUDY_KEYS = ("base", "output_dir", "seeds", "overrides", "grid", "metric")
# the held-out accuracies the trainer's evaluation logs (trainer/evaluate.py): greedy, and the mean over the
# eval_n samples drawn at the rollout temperature (pass@1 of the sampling policy, the quantity RL optimises)
METRICS = {"eval/acc": "held-out greedy accuracy", "eval/sampled_acc": "held-out sampled accuracy (pass@1)"}
SET_BY_STUDY = ("trainer.seed", "trainer.output_dir")  # the runner sets these per run


class StudyError(ConfigError):
    """A bad study file: the message names the key and what to do."""


@dataclass(frozen=True)
class Cell:
    name: str  # folder name under <output_dir>/runs/
    overrides: dict[str, Any]  # the grid's section.key values of this cell (study-wide overrides excluded)


@dataclass
class Study:
    path: Path
    base: Path
    output_dir: Path
    seeds: list[int]
    overrides: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    metric: str = "eval/acc"

    def run_dir(self, cell: Cell, seed: int) -> Path:
        return self.output_dir / "runs" / cell.name / f"seed_{seed}"

    def train_overrides(self, cell: Cell, seed: int) -> list[str]:
        """The `section.key=value` arguments of one run (study-wide first, then the cell's)."""
        merged = {**self.overrides, **cell.overrides, "trainer.seed": seed,
                  "trainer.output_dir": str(self.run_dir(cell, seed))}
        return [f"{k}={format_value(v)}" for k, v in merged.items()]


def format_value(v: Any) -> str:
    """A value as a command-line override (YAML flow style: lists, null, booleans round-trip)."""
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip()


def _slug(v: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", format_value(v)).strip("-") or "x"


def _check_override_keys(mapping: dict, where: str) -> None:
    for key in mapping:
        if not isinstance(key, str) or "." not in key:
            raise StudyError(f"{where}: key {key!r} is not of the form section.key (e.g. algo.beta)")
        if key in SET_BY_STUDY:
            raise StudyError(f"{where}: '{key}' is set by the study for every run (use 'seeds' / 'output_dir')")
        if key not in SCHEMA_KEYS:
            raise StudyError(f"{where}: {_unknown_key_error(key)}")


def _cells(grid: Any) -> list[Cell]:
    if isinstance(grid, dict):
        if not grid:
            raise StudyError("study 'grid' is empty: give section.key -> [values], or a list of named override mappings")
        _check_override_keys(grid, "study grid")
        for k, vals in grid.items():
            if not isinstance(vals, list) or not vals:
                raise StudyError(f"study grid '{k}': expected a non-empty list of values, got {vals!r}")
        short = {k: k.rsplit(".", 1)[1] for k in grid}
        if len(set(short.values())) < len(short):  # two sections share a field name: keep the full key
            short = {k: k for k in grid}
        cells = []
        for combo in itertools.product(*grid.values()):
            ov = dict(zip(grid, combo))
            cells.append(Cell("_".join(f"{short[k]}-{_slug(v)}" for k, v in ov.items()), ov))
        return cells
    if isinstance(grid, list):
        if not grid:
            raise StudyError("study 'grid' is empty: give section.key -> [values], or a list of named override mappings")
        cells = []
        for i, entry in enumerate(grid):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise StudyError(f"study grid entry {i}: expected a mapping with a 'name' and section.key overrides, got {entry!r}")
            ov = {k: v for k, v in entry.items() if k != "name"}
            _check_override_keys(ov, f"study grid entry '{entry['name']}'")
            if not re.fullmatch(r"[A-Za-z0-9._+-]+", entry["name"]):
                raise StudyError(f"study grid entry name {entry['name']!r}: use letters, digits and . _ + - only")
            cells.append(Cell(entry["name"], ov))
        return cells
    raise StudyError(f"study 'grid' must be a mapping (section.key -> [values]) or a list of named mappings, got {type(grid).__name__}")


def _apply_cli(raw: dict, items: list[str]) -> dict:
    """`key=value` arguments: study fields (base, output_dir, seeds) replace the file's; `section.key`
    ones join the study-wide overrides (applied to every cell)."""
    raw = dict(raw)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise StudyError(f"argument '{item}' is not of the form key=value")
        parsed = yaml.safe_load(value) if value else ""
        if key in ("base", "output_dir", "seeds", "metric"):
            raw[key] = parsed
        elif "." in key:
            raw["overrides"] = {**(raw.get("overrides") or {}), key: parsed}
        else:
            raise StudyError(f"argument '{item}': expected base=, output_dir=, seeds=[...], metric= or section.key=value")
    return raw


def load_study(path: str | Path, cli: list[str] = ()) -> Study:
    """Read, validate and expand a study file (relative paths in it are relative to the current directory)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise StudyError(f"cannot read study file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"study file {path}: expected a mapping with keys {', '.join(STUDY_KEYS)}")
    raw = _apply_cli(raw, list(cli))
    unknown = [k for k in raw if k not in STUDY_KEYS]
    if unknown:
        raise StudyError(f"study file {path}: unknown key '{unknown[0]}' (keys: {', '.join(STUDY_KEYS)})")
    for key in ("base", "output_dir", "seeds", "grid"):
        if raw.get(key) is None or (key != "grid" and raw[key] in ("", [])):
            raise StudyError(f"study file {path}: '{key}' is missing or empty")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise StudyError(f"study 'seeds' must be a list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"study 'seeds' has duplicates: {seeds}")
    metric = raw.get("metric") or "eval/acc"
    if metric not in METRICS:
        raise StudyError(f"study 'metric' {metric!r}: expected one of {', '.join(METRICS)}")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise StudyError(f"study 'overrides' must be a mapping of section.key to a value, got {overrides!r}")
    _check_override_keys(overrides, "study overrides")
    cells = _cells(raw["grid"])
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise StudyError(f"study grid: two cells share the name {next(n for n in names if names.count(n) > 1)!r}")
    study = Study(path=path, base=Path(raw["base"]), output_dir=Path(raw["output_dir"]), seeds=list(seeds),
                  overrides=overrides, cells=cells, metric=metric)
    if not study.base.is_file():
        raise StudyError(f"study 'base': trainer config not found: {study.base}")
    for cell in cells:  # every run's config must load before anything runs
        try:
            cfg = load_config(study.base, study.train_overrides(cell, seeds[0]))
        except ConfigError as e:
            raise StudyError(f"study cell '{cell.name}': {e}") from None
        if metric == "eval/sampled_acc" and cfg.trainer.eval_n < 2:  # logged only when evaluation samples
            raise StudyError(f"study 'metric' eval/sampled_acc needs trainer.eval_n >= 2 (cell '{cell.name}' "
                             "samples no evaluation responses)")
    return study
