"""Which code a study run was made with: the git commit of the spro_mcore checkout, marked `+modified` when
the package's source differs from it (an edited or a new file), or the installed version outside a git
checkout. Recorded per run, so a report says whether its runs share one revision (a change in float
rounding, e.g. a new kernel path, makes a rerun of the same study diverge after a few steps)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import spro_mcore

_PACKAGE = Path(spro_mcore.__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_PACKAGE.parent), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_revision() -> str:
    head = _git("rev-parse", "--short=12", "HEAD")
    # the package must be that repository's own source (not an install in a .venv inside some checkout)
    if head is None or not _git("ls-files", "--", str(_PACKAGE / "__init__.py")):
        return f"spro-mcore {spro_mcore.__version__} (not a git checkout)"
    changed = _git("status", "--porcelain", "--", str(_PACKAGE))  # untracked modules count: they may be imported
    return head + ("+modified" if changed else "")
