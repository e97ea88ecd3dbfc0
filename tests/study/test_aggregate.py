"""Study statistics against hand computations (and the t quantiles against numerical integration)."""

import math

import numpy as np
import pytest

from spro_mcore.study.aggregate import (
    compare_with_reference, curve, mean_ci95, msa_to_outcome_ratio, pick_reference, steps_to_target,
    summarize_cell, t975, tail_mean,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 29, 30, 31, 60, 200])
def test_t975_is_the_quantile_of_student_t(df):
    # independent check: integrate Student's t density from 0 to t975 -> 0.475
    x = np.linspace(0.0, t975(df), 400001)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(logc - (df + 1) / 2 * np.log1p(x**2 / df))
    assert np.trapezoid(pdf, x) == pytest.approx(0.475, abs=2e-6)


def test_mean_ci95_by_hand():
    m, ci = mean_ci95([0.5, 0.7])  # sd = 0.1414..., sd/sqrt(2) = 0.1, t(0.975, 1) = 12.7062
    assert m == pytest.approx(0.6) and ci == pytest.approx([0.6 - 1.270620, 0.6 + 1.270620], abs=1e-6)
    m, ci = mean_ci95([0.2, 0.4, 0.9])  # mean 0.5, sd = sqrt(0.13), t(0.975, 2) = 4.302653
    half = 4.302653 * math.sqrt(0.13) / math.sqrt(3)
    assert m == pytest.approx(0.5) and ci == pytest.approx([0.5 - half, 0.5 + half], abs=1e-6)
    assert mean_ci95([0.3]) == (0.3, None) and mean_ci95([]) == (None, None)


def rows(accs: dict[int, float], **per_step) -> list[dict]:
    """A run's metrics rows: eval/acc at the given steps, other metrics at steps 1..n."""
    out = {s: {"step": s, "eval/acc": a, "eval/pass@4": min(1.0, a + 0.25)} for s, a in accs.items()}
    for name, values in per_step.items():
        for s, v in enumerate(values, start=1):
            out.setdefault(s, {"step": s})[name] = v
    return [out[s] for s in sorted(out)]


def test_curve_uses_steps_every_seed_has():
    runs = {1: rows({0: 0.2, 5: 0.4, 10: 0.6}), 2: rows({0: 0.4, 10: 0.8})}
    c = curve(runs, "eval/acc")
    assert c["steps"] == [0, 10] and c["mean"] == pytest.approx([0.3, 0.7])
    assert c["ci95_low"][1] == pytest.approx(0.7 - 12.706205 * 0.1, abs=1e-6)


def test_steps_to_target_first_step_reaching_it():
    assert steps_to_target([0, 5, 10, 15], [0.2, 0.5, 0.45, 0.6], 0.5) == 5
    assert steps_to_target([0, 5], [0.2, 0.4], 0.5) is None
    assert steps_to_target([0, 5], [0.2, 0.4], None) is None


def test_tail_mean_and_balance():
    r = rows({}, **{"entropy/mean": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]})
    assert tail_mean(r, "entropy/mean") == pytest.approx(11.5)  # last ceil(1.2) = 2 steps
    r = rows({}, **{"adv/msa_abs_mean": [0.1, 0.3], "adv/grpo_abs_mean": [1.0, 1.0]})
    assert msa_to_outcome_ratio(r) == pytest.approx(0.2)
    assert msa_to_outcome_ratio(rows({}, **{"adv/msa_abs_mean": [0.0], "adv/grpo_abs_mean": [0.0]})) is None


def test_reference_is_grpo_with_the_same_non_algo_values():
    cells = {
        "grpo_a": {"algo": {"estimator": "grpo", "std_normalize": True}, "overrides": {"data.synthetic_task": "arithmetic"}},
        "dr_a": {"algo": {"estimator": "grpo", "std_normalize": False}, "overrides": {"data.synthetic_task": "arithmetic"}},
        "spro_a": {"algo": {"estimator": "spro", "std_normalize": True}, "overrides": {"data.synthetic_task": "arithmetic"}},
        "grpo_c": {"algo": {"estimator": "grpo", "std_normalize": True}, "overrides": {"data.synthetic_task": "chain"}},
        "spro_c": {"algo": {"estimator": "spro", "std_normalize": True}, "overrides": {"data.synthetic_task": "chain"}},
    }
    assert [pick_reference(n, cells) for n in cells] == ["grpo_a", "grpo_a", "grpo_a", "grpo_c", "grpo_c"]
    del cells["grpo_c"]
    assert pick_reference("spro_c", cells) is None


def test_comparison_with_the_reference_by_hand():
    # reference (GRPO): seed means 0.3 -> 0.5 -> 0.6 (best 0.6, reached at step 20)
    ref = summarize_cell({1: rows({0: 0.2, 10: 0.5, 20: 0.6}), 2: rows({0: 0.4, 10: 0.5, 20: 0.6})}, {1: 60.0, 2: 80.0})
    # cell: seed means 0.3 -> 0.65 -> 0.7: reaches 0.6 at step 10
    cell = summarize_cell({1: rows({0: 0.2, 10: 0.6, 20: 0.8}), 2: rows({0: 0.4, 10: 0.7, 20: 0.6})}, {1: 30.0, 2: 50.0})
    assert ref["best_acc_mean"] == pytest.approx(0.6) and cell["final_acc_mean"] == pytest.approx(0.7)
    assert cell["final_acc_ci95"] == pytest.approx([0.7 - 12.706205 * 0.1, 0.7 + 12.706205 * 0.1], abs=1e-6)
    assert cell["final_pass_at_k_mean"] == pytest.approx((1.0 + 0.85) / 2) and cell["pass_at_k_metric"] == "eval/pass@4"
    assert cell["wall_s_mean"] == 40.0 and cell["wall_s_total"] == 80.0
    c = compare_with_reference(cell, ref)
    assert c["target_acc"] == pytest.approx(0.6)
    assert (c["steps_to_target"], c["reference_steps_to_target"], c["efficiency_ratio"]) == (10, 20, 2.0)
    # paired differences per seed: 0.8 - 0.6 = 0.2, 0.6 - 0.6 = 0.0 -> mean 0.1, sd/sqrt(2) = 0.1
    assert c["paired_diff_mean"] == pytest.approx(0.1)
    assert c["paired_diff_ci95"] == pytest.approx([0.1 - 1.2706205, 0.1 + 1.2706205], abs=1e-6)
    assert c["paired_seeds"] == [1, 2]
    none = compare_with_reference(cell, None)
    assert none["steps_to_target"] is None and none["paired_diff_mean"] is None


def test_tokens_and_seconds_to_target_by_hand():
    """Cost = rollout tokens (mean length x samples per step) + prover tokens, and summed step time, by the
    end of the step at which the target is reached (seed means)."""
    steps = 4  # eval at 0, 2, 4; 8 samples per step
    ref = summarize_cell(
        {1: rows({0: 0.2, 2: 0.4, 4: 0.6}, **{"time/step": [1.0] * steps, "response_length/mean": [10.0] * steps}),
         2: rows({0: 0.2, 2: 0.4, 4: 0.6}, **{"time/step": [3.0] * steps, "response_length/mean": [20.0] * steps})},
        {1: 4.0, 2: 12.0}, 8)
    cell = summarize_cell(
        {1: rows({0: 0.2, 2: 0.6, 4: 0.6}, **{"time/step": [5.0] * steps, "response_length/mean": [10.0] * steps,
                                              "pav/prover_tokens": [100.0] * steps}),
         2: rows({0: 0.2, 2: 0.6, 4: 0.7}, **{"time/step": [7.0] * steps, "response_length/mean": [30.0] * steps,
                                              "pav/prover_tokens": [300.0] * steps})},
        {1: 20.0, 2: 28.0}, 8)
    c = compare_with_reference(cell, ref)
    assert (c["steps_to_target"], c["reference_steps_to_target"]) == (2, 4)
    # cell by step 2: seed 1 2*(10*8+100) = 360, seed 2 2*(30*8+300) = 1080 -> 720; seconds (10 + 14)/2 = 12
    assert c["tokens_to_target"] == pytest.approx(720.0) and c["seconds_to_target"] == pytest.approx(12.0)
    # reference by step 4: seed 1 4*80 = 320, seed 2 4*160 = 640 -> 480; seconds (4 + 12)/2 = 8
    assert c["reference_tokens_to_target"] == pytest.approx(480.0) and c["reference_seconds_to_target"] == pytest.approx(8.0)
    assert c["token_efficiency_ratio"] == pytest.approx(480.0 / 720.0)
    assert cell["cost_at_eval"]["0"] == (0.0, 0.0)


def test_the_study_metric_drives_final_target_and_paired_difference():
    """metric=eval/sampled_acc: the same hand computation as above on the sampled accuracy, while greedy
    accuracy (which goes the other way here) is kept as a curve only."""
    def both(sampled, greedy):
        return [{"step": s, "eval/sampled_acc": a, "eval/acc": greedy[s]} for s, a in sampled.items()]

    g = {0: 0.9, 10: 0.5, 20: 0.1}
    ref = summarize_cell({1: both({0: 0.2, 10: 0.5, 20: 0.6}, g), 2: both({0: 0.4, 10: 0.5, 20: 0.6}, g)}, {1: 1.0, 2: 1.0},
                         metric="eval/sampled_acc")
    cell = summarize_cell({1: both({0: 0.2, 10: 0.6, 20: 0.8}, g), 2: both({0: 0.4, 10: 0.7, 20: 0.6}, g)}, {1: 1.0, 2: 1.0},
                          metric="eval/sampled_acc")
    assert cell["metric"] == "eval/sampled_acc" and cell["final_acc_mean"] == pytest.approx(0.7)
    assert cell["curves"]["eval/acc"]["mean"] == pytest.approx([0.9, 0.5, 0.1])
    c = compare_with_reference(cell, ref)
    assert (c["target_acc"], c["steps_to_target"], c["reference_steps_to_target"]) == (pytest.approx(0.6), 10, 20)
    assert c["paired_diff_mean"] == pytest.approx(0.1)
