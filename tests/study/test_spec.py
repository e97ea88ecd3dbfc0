"""The study file: cells from a grid or a named list, command-line values, and one-line errors for bad files."""

from pathlib import Path

import pytest
import yaml

from spro_mcore.study.spec import StudyError, load_study

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BASE = str(ROOT / "configs" / "quickstart_cpu.yaml")


def write(tmp_path, **fields) -> Path:
    doc = {"base": BASE, "output_dir": str(tmp_path / "out"), "seeds": [1, 2], **fields}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_grid_is_crossed_into_named_cells_with_per_run_overrides(tmp_path):
    study = load_study(write(tmp_path, overrides={"trainer.total_steps": 3},
                             grid={"algo.estimator": ["grpo", "spro"], "algo.beta": [0.1, 2]}))
    assert [c.name for c in study.cells] == [
        "estimator-grpo_beta-0.1", "estimator-grpo_beta-2", "estimator-spro_beta-0.1", "estimator-spro_beta-2"]
    cell = study.cells[2]
    assert study.run_dir(cell, 2) == tmp_path / "out" / "runs" / "estimator-spro_beta-0.1" / "seed_2"
    assert study.train_overrides(cell, 2) == [
        "trainer.total_steps=3", "algo.estimator=spro", "algo.beta=0.1", "trainer.seed=2",
        f"trainer.output_dir={tmp_path / 'out' / 'runs' / 'estimator-spro_beta-0.1' / 'seed_2'}"]


def test_named_list_and_command_line_values(tmp_path):
    path = write(tmp_path, grid=[{"name": "grpo", "algo.estimator": "grpo"},
                                 {"name": "drgrpo", "algo.estimator": "grpo", "algo.std_normalize": False}])
    study = load_study(path, ["seeds=[7]", "trainer.total_steps=2", f"output_dir={tmp_path / 'o2'}"])
    assert [c.name for c in study.cells] == ["grpo", "drgrpo"] and study.seeds == [7]
    assert study.overrides == {"trainer.total_steps": 2} and study.output_dir == tmp_path / "o2"
    assert "algo.std_normalize=false" in study.train_overrides(study.cells[1], 7)


def test_metric_defaults_to_greedy_and_can_be_set(tmp_path):
    grid = {"algo.beta": [1]}
    assert load_study(write(tmp_path, grid=grid)).metric == "eval/acc"
    assert load_study(write(tmp_path, grid=grid, metric="eval/sampled_acc")).metric == "eval/sampled_acc"
    assert load_study(write(tmp_path, grid=grid), ["metric=eval/sampled_acc"]).metric == "eval/sampled_acc"


@pytest.mark.parametrize("fields, message", [
    ({"grid": {"algo.betta": [0.1]}}, "study grid: unknown config key 'algo.betta'; did you mean 'algo.beta'?"),
    ({"grid": {}}, "study 'grid' is empty"),
    ({"grid": []}, "study 'grid' is empty"),
    ({"grid": {"algo.beta": []}}, "study grid 'algo.beta': expected a non-empty list"),
    ({"grid": {"algo.beta": 0.1}}, "study grid 'algo.beta': expected a non-empty list"),
    ({"grid": {"trainer.seed": [1, 2]}}, "'trainer.seed' is set by the study"),
    ({"grid": {"algo.estimator": ["grpo", "sprO"]}}, "study cell 'estimator-sprO': config key 'algo.estimator' = 'sprO' is not one of"),
    ({"grid": [{"algo.beta": 1.0}]}, "study grid entry 0: expected a mapping with a 'name'"),
    ({"grid": [{"name": "a", "algo.beta": 1}, {"name": "a", "algo.beta": 2}]}, "two cells share the name 'a'"),
    ({"grid": {"algo.beta": [1]}, "sweep": 3}, "unknown key 'sweep'"),
    ({"grid": {"algo.beta": [1]}, "seeds": [1, "x"]}, "'seeds' must be a list of integers"),
    ({"grid": {"algo.beta": [1]}, "overrides": {"optim.learning_rate": 1}}, "study overrides: unknown config key 'optim.learning_rate'"),
    ({"grid": {"algo.beta": [1]}, "base": "nope.yaml"}, "trainer config not found: nope.yaml"),
    ({"grid": {"algo.beta": [1]}, "metric": "eval/pass@4"}, "study 'metric' 'eval/pass@4': expected one of eval/acc, eval/sampled_acc"),
    ({"grid": {"algo.beta": [1]}, "metric": "eval/sampled_acc", "overrides": {"trainer.eval_n": 1}},
     "eval/sampled_acc needs trainer.eval_n >= 2 (cell 'beta-1'"),
])
def test_bad_study_files_fail_with_one_line(tmp_path, fields, message):
    with pytest.raises(StudyError) as e:
        load_study(write(tmp_path, **fields))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written
