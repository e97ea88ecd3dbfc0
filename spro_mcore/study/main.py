"""`spro-mcore study --config STUDY.yaml [key=value ...]`: validate, run what is missing, aggregate."""

from __future__ import annotations

from spro_mcore.study.report import write_report
from spro_mcore.study.runner import run_all
from spro_mcore.study.spec import StudyError, load_study


def study_main(config_path: str | None, cli: list[str], *, report_only: bool = False, progress: bool = True,
               cells: str | None = None) -> int:
    if not config_path:
        raise StudyError("spro-mcore study needs --config STUDY.yaml")
    study = load_study(config_path, cli)
    only = _cell_names(study, cells)
    failures = [] if report_only else run_all(study, progress=progress, only=only)
    summary = write_report(study)
    print(f"study: {summary['runs_complete']} of {summary['runs_planned']} runs complete; "
          f"report in {study.output_dir / 'report.md'}")
    if failures:
        f = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise StudyError(f"run {f.cell} seed {f.seed} failed with exit {f.returncode}{more}: {f.last_line} "
                         f"(log: {f.log}); completed runs are kept and aggregated")
    return 0


def _cell_names(study, cells: str | None) -> set[str] | None:
    """`--cells a,b`: run only these cells now (e.g. the cheap ones first); the report still covers every cell."""
    if cells is None:
        return None
    names = {c.strip() for c in cells.split(",") if c.strip()}
    unknown = sorted(names - {c.name for c in study.cells})
    if unknown or not names:
        raise StudyError(f"--cells names {', '.join(unknown) or 'no cell'}; the study's cells are "
                         f"{', '.join(c.name for c in study.cells)}")
    return names
