"""`spro-mcore study --config STUDY.yaml [key=value ...]`: validate, run what is missing, aggregate."""

from __future__ import annotations

from spro_mcore.study.report import write_report
from spro_mcore.study.runner import run_all
from spro_mcore.study.spec import StudyError, load_study


def study_main(config_path: str | None, cli: list[str], *, report_only: bool = False, progress: bool = True) -> int:
    if not config_path:
        raise StudyError("spro-mcore study needs --config STUDY.yaml")
    study = load_study(config_path, cli)
    failures = [] if report_only else run_all(study, progress=progress)
    summary = write_report(study)
    print(f"study: {summary['runs_complete']} of {summary['runs_planned']} runs complete; "
          f"report in {study.output_dir / 'report.md'}")
    if failures:
        f = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise StudyError(f"run {f.cell} seed {f.seed} failed with exit {f.returncode}{more}: {f.last_line} "
                         f"(log: {f.log}); completed runs are kept and aggregated")
    return 0
