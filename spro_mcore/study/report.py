"""A study's aggregate: summary.json (the pinned fields), report.md and PNG plots in <output_dir>.

Reads only complete runs (those with a ``study_run.json``); cells without one appear with null statistics,
so a report of a study still under way says exactly what ran.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from spro_mcore.config import load_config
from spro_mcore.study.aggregate import compare_with_reference, pick_reference, summarize_cell
from spro_mcore.study.runner import read_marker, run_code, run_wall_s
from spro_mcore.study.spec import METRICS, Study, format_value


def _curve_plots(summary: dict[str, Any]) -> list[tuple[str, Optional[str], str]]:
    """(file name, metric, title) of each curve plot; final.png (the bar charts) comes after them."""
    pk = next((c["pass_at_k_metric"] for c in summary["cells"] if c["seeds"] and c["pass_at_k_metric"]), None)
    plots = [("acc_vs_step.png", summary["metric"], METRICS[summary["metric"]].split(" (")[0]),
             ("pass_at_k_vs_step.png", pk, f"held-out {(pk or 'pass@k').removeprefix('eval/')}")]
    if summary["metric"] != "eval/acc":  # greedy accuracy is drawn too, beside the metric cells are ranked by
        plots.append(("greedy_acc_vs_step.png", "eval/acc", METRICS["eval/acc"]))
    return plots


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def build_summary(study: Study) -> dict[str, Any]:
    info, stats, runs, walls, samples = {}, {}, {}, {}, {}
    for cell in study.cells:
        cfg = load_config(study.base, study.train_overrides(cell, study.seeds[0]))
        info[cell.name] = {"algo": dataclasses.asdict(cfg.algo), "overrides": cell.overrides}
        done = [s for s in study.seeds if read_marker(study.run_dir(cell, s)) is not None]
        runs[cell.name] = {s: _rows(study.run_dir(cell, s)) for s in done}
        walls[cell.name] = {s: run_wall_s(study.run_dir(cell, s)) for s in done}
        samples[cell.name] = cfg.rollout.n * cfg.data.prompts_per_step
        stats[cell.name] = summarize_cell(runs[cell.name], walls[cell.name], samples[cell.name], study.metric)
    cells = []
    for cell in study.cells:
        ref = pick_reference(cell.name, info)
        s = stats[cell.name]
        # the comparison uses the seeds both cells completed (the seed also draws the eval problems, so a
        # target set on other seeds is another exam)
        common = sorted(set(runs[cell.name]) & set(runs[ref])) if ref else []
        ref_stats = (summarize_cell({k: runs[ref][k] for k in common}, {k: walls[ref][k] for k in common}, samples[ref],
                                    study.metric)
                     if ref and common else None)
        cells.append({
            "name": cell.name,
            "overrides": cell.overrides,
            "seeds_planned": study.seeds,
            **s,
            "reference": ref,
            **compare_with_reference(summarize_cell({k: runs[cell.name][k] for k in common}, {k: walls[cell.name][k] for k in common},
                                                    samples[cell.name], study.metric) if common else s, ref_stats),
        })
    return {
        "study_file": str(study.path),
        "base": str(study.base),
        "seeds": study.seeds,
        "overrides": study.overrides,
        "metric": study.metric,
        "runs_complete": sum(len(c["seeds"]) for c in cells),
        # the code revisions of the complete runs ("unrecorded": runs from before revisions were recorded)
        "code_revisions": sorted({code for cell in study.cells for s in runs[cell.name]
                                  for code in (run_code(study.run_dir(cell, s)) or ["unrecorded"])}),
        "runs_planned": len(study.cells) * len(study.seeds),
        "cells": cells,
    }


def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _ci(ci: Optional[list[float]], digits: int = 3) -> str:
    return "–" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _minutes(s: Optional[float]) -> str:
    return "–" if s is None else f"{s / 60:.1f} min"


def _code_line(summary: dict[str, Any]) -> str:
    codes = summary.get("code_revisions") or []
    if not codes:
        return ""
    if len(codes) == 1:
        return f"Code: `{codes[0]}` for every run."
    return "Code revisions (runs made with different code): " + ", ".join(f"`{c}`" for c in codes) + "."


def render_markdown(summary: dict[str, Any]) -> str:
    cells = summary["cells"]
    f = Path(summary["study_file"])
    L = [f"# Study: {f.parent.name if f.stem == 'study' else f.stem}", "",
         f"Written by `spro-mcore study --config {summary['study_file']}`. Base config `{summary['base']}`, "
         f"seeds {summary['seeds']} (each is `trainer.seed`), applied to every cell: "
         + (", ".join(f"`{k}={format_value(v)}`" for k, v in summary["overrides"].items()) or "nothing") + ".",
         "", f"**Runs complete: {summary['runs_complete']} of {summary['runs_planned']}.** " + _code_line(summary),
         "",
         "## Cells", "", "| cell | grid values | seeds complete | wall time per run | reference |", "|---|---|---|---|---|"]
    for c in cells:
        ov = ", ".join(f"`{k}={format_value(v)}`" for k, v in c["overrides"].items()) or "–"
        missing = [s for s in c["seeds_planned"] if s not in c["seeds"]]
        done = f"{c['seeds']}" + (f" (not run: {missing})" if missing else "")
        L.append(f"| {c['name']} | {ov} | {done} | {_minutes(c['wall_s_mean'])} | {c['reference'] or '–'} |")
    pk = next((c["pass_at_k_metric"] for c in cells if c["pass_at_k_metric"]), None) or "pass@k"
    L += ["", "## Results", "",
          f"Accuracy is the study's metric, `{summary['metric']}`: {METRICS[summary['metric']]}. "
          "Final = the last evaluated step; intervals are 95% t-intervals over seeds. "
          "Steps-to-target: the first evaluated step at which the cell's seed-mean accuracy reaches the "
          "reference's best seed-mean accuracy, both over the seeds the two cells completed (the seed also draws "
          "the held-out problems); efficiency = reference steps / cell steps. Paired difference: "
          "cell minus reference final accuracy on the same seeds. Entropy and response length: mean over the "
          "last 10% of steps. MSA/outcome: sum of `adv/msa_abs_mean` / sum of `adv/grpo_abs_mean` over the run.",
          "", f"| cell | final acc | 95% CI | final {pk.removeprefix('eval/')} | steps to target | efficiency | "
          "paired diff vs ref | 95% CI | entropy | length | MSA/outcome |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        reached = ("–" if c["target_acc"] is None else
                   "not reached" if c["steps_to_target"] is None else str(c["steps_to_target"]))
        L.append(
            f"| {c['name']} | {_fmt(c['final_acc_mean'])} | {_ci(c['final_acc_ci95'])} | {_fmt(c['final_pass_at_k_mean'])} "
            f"| {reached} | {_fmt(c['efficiency_ratio'], 2)} | {_fmt(c['paired_diff_mean'])} | {_ci(c['paired_diff_ci95'])} "
            f"| {_fmt(c['entropy_final_mean'])} | {_fmt(c['response_length_final_mean'], 1)} "
            f"| {_fmt(c['msa_to_outcome_ratio_mean'])} |")
    L += ["", "## Cost to target", "",
          "Generated tokens (the policy's rollouts plus, for PAV's Monte-Carlo source, the prover's continuations) "
          "and training seconds (sum of `time/step`) spent by the step at which the cell reached the target; "
          "token efficiency = reference tokens / cell tokens (>1: the cell got there on fewer tokens).", "",
          "| cell | steps to target | tokens to target | reference tokens | token efficiency | seconds to target "
          "| reference seconds |", "|---|---|---|---|---|---|---|"]
    for c in cells:
        if c["target_acc"] is None:
            continue
        reached = "not reached" if c["steps_to_target"] is None else str(c["steps_to_target"])
        L.append(f"| {c['name']} | {reached} | {_fmt(c['tokens_to_target'], 0)} | {_fmt(c['reference_tokens_to_target'], 0)} "
                 f"| {_fmt(c['token_efficiency_ratio'], 2)} | {_fmt(c['seconds_to_target'], 0)} "
                 f"| {_fmt(c['reference_seconds_to_target'], 0)} |")
    plots = [name for name, _, _ in _curve_plots(summary)] + ["final.png"]
    L += ["", "## Plots", "", *(f"![{p}]({p})" for p in plots), "",
          "## Reproduce one run", "",
          "Each run is `spro-mcore train --config <base> <study overrides> <cell's grid values> trainer.seed=<seed>`; "
          "the trainer is deterministic on CPU, so the same command gives the same metrics.", ""]
    return "\n".join(L)


def draw_plots(summary: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in summary["cells"] if c["seeds"]]
    paths = []
    for fname, metric, title in _curve_plots(summary):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for c in cells:
            cv = c["curves"].get(metric) if metric else None
            if not cv or not cv["steps"]:
                continue
            line, = ax.plot(cv["steps"], cv["mean"], marker="o", ms=3, label=f"{c['name']} (n={len(c['seeds'])})")
            if all(v is not None for v in cv["ci95_low"]):
                ax.fill_between(cv["steps"], cv["ci95_low"], cv["ci95_high"], color=line.get_color(), alpha=0.15)
        ax.set(title=f"{title}: seed mean, 95% interval", xlabel="step", ylabel=title.split(" ")[-1])
        ax.set_ylim(-0.02, 1.02)  # accuracies: a two-seed interval (t = 12.7) would otherwise set the scale
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        paths.append(out / fname)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [c["name"] for c in cells]
    means = [c["final_acc_mean"] for c in cells]
    err = [[m - c["final_acc_ci95"][0] if c["final_acc_ci95"] else 0 for m, c in zip(means, cells)],
           [c["final_acc_ci95"][1] - m if c["final_acc_ci95"] else 0 for m, c in zip(means, cells)]]
    a1.bar(names, means, yerr=err, capsize=4, color="tab:blue", alpha=0.7)
    a1.set(title=f"final {summary['metric'].removeprefix('eval/')} (95% interval)", ylabel="accuracy")
    a2.bar(names, [c["msa_to_outcome_ratio_mean"] or 0 for c in cells], color="tab:orange", alpha=0.7)
    a2.set(title="MSA term / outcome term (|advantage| ratio)", ylabel="ratio")
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=45, labelsize=7)
        a.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "final.png", dpi=110)
    plt.close(fig)
    paths.append(out / "final.png")
    return paths


def write_report(study: Study) -> dict[str, Any]:
    """summary.json, report.md and the plots, written into the study's output_dir; returns the summary."""
    summary = build_summary(study)
    out = study.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    draw_plots(summary, out)
    (out / "report.md").write_text(render_markdown(summary))
    return summary
