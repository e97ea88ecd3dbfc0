"""`spro-mcore train | convert | eval | export | pav collect|train|score | search | study | config`: the command-line entry point.

Bad input (config, data, checkpoint) ends with one line on stderr naming the problem and a non-zero exit.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _train(args) -> int:
    from spro_mcore.trainer.run import train_main

    return train_main(args.config, args.overrides)


def _eval(args) -> int:
    from spro_mcore.trainer.run import eval_main

    return eval_main(args.config, args.overrides)


def _convert(args) -> int:
    from spro_mcore.models.convert import convert_main

    return convert_main(args.convert_args)


def _export(args) -> int:
    from spro_mcore.trainer.checkpoint.export import export_main

    return export_main(args.export_args)


def _pav(args) -> int:
    if args.pav_command == "collect":
        from spro_mcore.pav.collect import collect_main

        return collect_main(args.config, args.overrides)
    if args.pav_command == "train":
        from spro_mcore.pav.train import train_main

        return train_main(args.config, args.overrides)
    if args.pav_command == "score":
        from spro_mcore.pav.score import score_main

        return score_main(args.config, args.overrides)
    raise AssertionError(args.pav_command)


def _search(args) -> int:
    from spro_mcore.pav.search_cmd import search_main

    return search_main(args.config, args.overrides)


def _study(args) -> int:
    from spro_mcore.study.main import study_main

    return study_main(args.config, args.overrides, report_only=args.report_only, cells=args.cells)


def _config(args) -> int:
    from spro_mcore.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spro-mcore",
        description="SPRO (self-guided process rewards, Masked Step Advantage) RL post-training on Megatron-core.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(p):
        p.add_argument("--config", "-c", default=None, help="YAML recipe (see configs/)")
        p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. trainer.total_steps=3")
        return p

    with_config(sub.add_parser("train", help="run SPRO/GRPO training (under torchrun for TP/PP/DP > 1)")).set_defaults(
        fn=_train
    )
    with_config(sub.add_parser("eval", help="evaluate a policy on the held-out split (greedy accuracy, pass@k)")).set_defaults(
        fn=_eval
    )
    conv = sub.add_parser(
        "convert", help="convert checkpoints: hf-to-mcore | mcore-to-hf (see --help of each)", add_help=False
    )
    conv.add_argument("convert_args", nargs=argparse.REMAINDER)
    conv.set_defaults(fn=_convert)
    exp = sub.add_parser("export", help="export a training checkpoint (or the newest in a folder) as an HF directory",
                         add_help=False)
    exp.add_argument("export_args", nargs=argparse.REMAINDER)
    exp.set_defaults(fn=_export)
    pav = sub.add_parser("pav", help="process advantage verifiers: collect Monte-Carlo progress targets, train and score")
    pav_sub = pav.add_subparsers(dest="pav_command", metavar="PAV_COMMAND", required=True)
    with_config(pav_sub.add_parser("collect", help="sample responses, estimate each step prefix's Q-hat (Parquet)")
                ).set_defaults(fn=_pav)
    with_config(pav_sub.add_parser("train", help="train the verifier (value head on the policy) on a collection "
                                                 "(under torchrun for TP/PP/DP > 1)")).set_defaults(fn=_pav)
    with_config(pav_sub.add_parser("score", help="per-step Q and progress of given responses under a trained verifier")
                ).set_defaults(fn=_pav)
    with_config(sub.add_parser("search", help="PAV beam search vs best-of-N and majority vote at equal generated "
                                              "tokens (results.json + PNG)")).set_defaults(fn=_search)
    with_config(sub.add_parser("config", help="print the resolved, validated configuration")).set_defaults(fn=_config)
    study = sub.add_parser("study", help="run a grid of training runs over seeds (resumable) and write report.md + plots")
    study.add_argument("--config", "-c", default=None, help="study file (base, output_dir, seeds, overrides, grid)")
    study.add_argument("--report-only", action="store_true", help="aggregate the complete runs; start none")
    study.add_argument("--cells", default=None, help="comma-separated cell names: run only these now (report: all)")
    study.add_argument("overrides", nargs="*", help="base=/output_dir=/seeds=[...] or section.key=value for every cell")
    study.set_defaults(fn=_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from spro_mcore import quiet
    from spro_mcore.errors import bad_input_errors

    quiet.install()  # before anything imports megatron-core; train/eval redo it with logging.level

    try:
        return int(args.fn(args) or 0)
    except bad_input_errors() as e:
        print(f"spro-mcore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        # a full, read-only or forbidden file system: the machine's problem, not a bug; writes are atomic
        where = f": {e.filename}" if e.filename else ""
        print(f"spro-mcore {args.command}: error: {os.strerror(e.errno).lower()}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
