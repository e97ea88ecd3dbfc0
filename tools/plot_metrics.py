"""Draw the curves of one or several runs' metrics.jsonl to a PNG.

    python tools/plot_metrics.py outputs/quickstart_cpu outputs/quickstart_cpu_grpo -o curves.png \
        --metrics reward/mean eval/acc adv/msa_abs_mean response_length/mean
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

DEFAULT = ["reward/mean", "eval/acc", "response_length/mean", "entropy/mean", "adv/grpo_abs_mean", "adv/msa_abs_mean"]


def read_run(path: Path) -> list[dict]:
    f = path / "metrics.jsonl" if path.is_dir() else path
    if not f.is_file():
        sys.exit(f"plot_metrics: error: no metrics.jsonl at {f}")
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run output directories (or metrics.jsonl files)")
    ap.add_argument("-o", "--out", type=Path, default=Path("metrics.png"))
    ap.add_argument("--metrics", nargs="+", default=DEFAULT)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {str(r): read_run(r) for r in args.runs}
    cols = min(3, len(args.metrics))
    rows = math.ceil(len(args.metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, args.metrics):
        for name, rows_ in runs.items():
            pts = [(r["step"], r[metric]) for r in rows_ if metric in r]
            if pts:
                ax.plot(*zip(*pts), marker="o" if metric.startswith("eval/") else None, ms=3, label=name)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(args.metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
