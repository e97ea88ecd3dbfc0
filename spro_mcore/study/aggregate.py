"""Study statistics as pure functions over metrics rows (one dict per line of a run's metrics.jsonl).

Intervals are two-sided 95% Student-t intervals over seeds (mean +- t(0.975, n-1) * sd / sqrt(n), sample
sd); with one seed there is no interval (None). A cell's curve uses the evaluated steps every one of its
seeds has. The reference of a cell is the GRPO cell (estimator grpo, std_normalize true) whose grid values
outside ``algo.*`` equal the cell's (so a grid over tasks compares each task with its own GRPO).
"""

from __future__ import annotations

import math
from statistics import mean, stdev
from typing import Any, Optional

# t(0.975, df) for df = 1..30 (standard tables); larger df use the Cornish-Fisher expansion below
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)
_Z975 = 1.959963984540054

Rows = list[dict[str, Any]]


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def mean_ci95(values: list[float]) -> tuple[Optional[float], Optional[list[float]]]:
    """Mean and its 95% t-interval [low, high]; (mean, None) for one value, (None, None) for none."""
    if not values:
        return None, None
    m = mean(values)
    if len(values) < 2:
        return m, None
    half = t975(len(values) - 1) * stdev(values) / math.sqrt(len(values))
    return m, [m - half, m + half]


def series(rows: Rows, metric: str) -> dict[int, float]:
    """step -> value of ``metric`` for the rows that have it."""
    return {int(r["step"]): float(r[metric]) for r in rows if metric in r and r[metric] is not None}


def pass_at_k_metric(rows: Rows) -> Optional[str]:
    """The run's ``eval/pass@<k>`` metric name, if it logged one."""
    return next((k for r in rows for k in r if k.startswith("eval/pass@")), None)


def curve(runs: dict[int, Rows], metric: str) -> dict[str, list]:
    """Seed-mean curve of ``metric`` over the steps every seed has: steps, mean, ci95_low, ci95_high."""
    per_seed = [series(rows, metric) for rows in runs.values()]
    steps = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    out: dict[str, list] = {"steps": steps, "mean": [], "ci95_low": [], "ci95_high": []}
    for step in steps:
        m, ci = mean_ci95([s[step] for s in per_seed])
        out["mean"].append(m)
        out["ci95_low"].append(ci[0] if ci else None)
        out["ci95_high"].append(ci[1] if ci else None)
    return out


def steps_to_target(steps: list[int], means: list[float], target: Optional[float]) -> Optional[int]:
    """The first step whose seed-mean value reaches ``target`` (None when it never does, or no target)."""
    if target is None:
        return None
    return next((s for s, m in zip(steps, means) if m >= target - 1e-12), None)


def cumulative_cost(rows: Rows, samples_per_step: int) -> dict[int, tuple[float, float]]:
    """step -> (generated tokens, seconds) spent by the end of that step: the policy's rollout tokens
    (``response_length/mean`` x samples per step) plus the prover's continuation tokens (``pav/prover_tokens``,
    PAV's Monte-Carlo source), and the sum of ``time/step``. Step 0 (before training) costs nothing."""
    out, tokens, seconds = {0: (0.0, 0.0)}, 0.0, 0.0
    for r in sorted((r for r in rows if "time/step" in r), key=lambda r: int(r["step"])):
        tokens += float(r.get("response_length/mean", 0.0)) * samples_per_step + float(r.get("pav/prover_tokens", 0.0))
        seconds += float(r["time/step"])
        out[int(r["step"])] = (tokens, seconds)
    return out


def cost_at(runs: dict[int, Rows], samples_per_step: int, step: Optional[int]) -> tuple[Optional[float], Optional[float]]:
    """Seed-mean (generated tokens, seconds) by the end of ``step`` (None when there is no such step)."""
    if step is None or not runs:
        return None, None
    costs = [cumulative_cost(rows, samples_per_step).get(step) for rows in runs.values()]
    if any(c is None for c in costs):
        return None, None
    return mean(c[0] for c in costs), mean(c[1] for c in costs)


def tail_mean(rows: Rows, metric: str, fraction: float = 0.1) -> Optional[float]:
    """Mean of ``metric`` over the last ``fraction`` of the steps that logged it (at least one step)."""
    vals = [v for _, v in sorted(series(rows, metric).items())]
    if not vals:
        return None
    return mean(vals[-max(1, math.ceil(fraction * len(vals))):])


def msa_to_outcome_ratio(rows: Rows) -> Optional[float]:
    """Size of the SPRO process term relative to the outcome term over the run: sum over steps of
    ``adv/msa_abs_mean`` / sum of ``adv/grpo_abs_mean`` (None when the run logged no outcome term)."""
    msa, grpo = series(rows, "adv/msa_abs_mean"), series(rows, "adv/grpo_abs_mean")
    steps = sorted(set(msa) & set(grpo))
    total = sum(grpo[s] for s in steps)
    return sum(msa[s] for s in steps) / total if steps and total > 0 else None


def is_reference(algo: dict[str, Any]) -> bool:
    """A GRPO cell (outcome term only, std-normalised): what every other cell is compared with."""
    return algo.get("estimator") == "grpo" and bool(algo.get("std_normalize", True))


def pick_reference(name: str, cells: dict[str, dict]) -> Optional[str]:
    """The reference cell for ``name``: ``cells`` maps a cell name to {"algo": resolved algo fields,
    "overrides": its grid values}; the first reference cell whose non-``algo.*`` grid values match."""
    def outside_algo(c):
        return {k: v for k, v in c["overrides"].items() if not k.startswith("algo.")}

    want = outside_algo(cells[name])
    return next((n for n, c in cells.items() if is_reference(c["algo"]) and outside_algo(c) == want), None)


def summarize_cell(runs: dict[int, Rows], walls: dict[int, float], samples_per_step: int = 0,
                   metric: str = "eval/acc") -> dict[str, Any]:
    """A cell's own statistics over its complete seeds (``runs``: seed -> rows; ``walls``: seed -> seconds;
    ``samples_per_step``: prompts x responses per prompt, for the token cost; ``metric``: the accuracy the
    "acc" fields, the target and the paired difference are about)."""
    acc = curve(runs, metric)
    pk_name = next((m for m in map(pass_at_k_metric, runs.values()) if m), None)
    pk = curve(runs, pk_name) if pk_name else None
    final_step = acc["steps"][-1] if acc["steps"] else None
    final_acc = {s: series(rows, metric)[final_step] for s, rows in runs.items()} if final_step is not None else {}
    fa_mean, fa_ci = mean_ci95(list(final_acc.values()))
    pk_mean, pk_ci = (mean_ci95([series(rows, pk_name)[pk["steps"][-1]] for rows in runs.values()])
                      if pk and pk["steps"] else (None, None))

    def over_seeds(fn):
        vals = [v for v in (fn(rows) for rows in runs.values()) if v is not None]
        return mean(vals) if vals else None

    greedy = curve(runs, "eval/acc") if metric != "eval/acc" else None
    return {
        "metric": metric,
        "seeds": sorted(runs),
        "final_step": final_step,
        "final_acc_mean": fa_mean,
        "final_acc_ci95": fa_ci,
        "final_acc_per_seed": {str(s): v for s, v in sorted(final_acc.items())},
        "pass_at_k_metric": pk_name,
        "final_pass_at_k_mean": pk_mean,
        "final_pass_at_k_ci95": pk_ci,
        "best_acc_mean": max(acc["mean"]) if acc["mean"] else None,
        "entropy_final_mean": over_seeds(lambda r: tail_mean(r, "entropy/mean")),
        "response_length_final_mean": over_seeds(lambda r: tail_mean(r, "response_length/mean")),
        "msa_to_outcome_ratio_mean": over_seeds(msa_to_outcome_ratio),
        "wall_s_mean": mean(walls.values()) if walls else None,
        "wall_s_total": sum(walls.values()) if walls else None,
        "curves": {metric: acc, **({"eval/acc": greedy} if greedy else {}), **({pk_name: pk} if pk else {})},
        # cumulative cost at every evaluated step (seed means), for tokens- and seconds-to-target
        "cost_at_eval": {str(step): cost_at(runs, samples_per_step, step) for step in acc["steps"]},
    }


def compare_with_reference(cell: dict[str, Any], ref: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Steps-to-target and the paired final-accuracy difference of ``cell`` against its reference's summary.

    target = the reference's best seed-mean accuracy; efficiency = reference steps / cell steps to reach it
    (the paper's "training efficiency"); the paired difference uses the seeds both cells completed.
    """
    out = {"target_acc": None, "steps_to_target": None, "reference_steps_to_target": None,
           "efficiency_ratio": None, "tokens_to_target": None, "reference_tokens_to_target": None,
           "token_efficiency_ratio": None, "seconds_to_target": None, "reference_seconds_to_target": None,
           "paired_diff_mean": None, "paired_diff_ci95": None, "paired_seeds": []}
    if ref is None or ref["best_acc_mean"] is None:
        return out
    target = ref["best_acc_mean"]
    acc, ref_acc = cell["curves"][cell["metric"]], ref["curves"][cell["metric"]]
    mine = steps_to_target(acc["steps"], acc["mean"], target)
    theirs = steps_to_target(ref_acc["steps"], ref_acc["mean"], target)
    seeds = sorted(set(cell["final_acc_per_seed"]) & set(ref["final_acc_per_seed"]), key=int)
    d_mean, d_ci = mean_ci95([cell["final_acc_per_seed"][s] - ref["final_acc_per_seed"][s] for s in seeds])
    my_cost = cell.get("cost_at_eval", {}).get(str(mine), (None, None)) if mine is not None else (None, None)
    their_cost = ref.get("cost_at_eval", {}).get(str(theirs), (None, None)) if theirs is not None else (None, None)
    out.update(target_acc=target, steps_to_target=mine, reference_steps_to_target=theirs,
               efficiency_ratio=(theirs / mine) if mine and theirs is not None else None,
               tokens_to_target=my_cost[0], reference_tokens_to_target=their_cost[0],
               token_efficiency_ratio=(their_cost[0] / my_cost[0]) if my_cost[0] and their_cost[0] is not None else None,
               seconds_to_target=my_cost[1], reference_seconds_to_target=their_cost[1],
               paired_diff_mean=d_mean, paired_diff_ci95=d_ci, paired_seeds=[int(s) for s in seeds])
    return out
