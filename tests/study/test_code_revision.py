"""The code revision a study run records: this checkout's commit (and whether the package's source
differs from it), or the installed version outside a git checkout."""

import re
import subprocess

import pytest

from spro_mcore.study import code_revision as cr

pytestmark = pytest.mark.unit


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _commit(repo, *paths) -> str:
    """A new repository at `repo` with `paths` committed; its short HEAD."""
    _git(repo, "init", "-q")
    _git(repo, "add", *paths)
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    return _git(repo, "rev-parse", "--short=12", "HEAD").strip()


def test_checkout_revision_is_head_and_says_when_the_package_is_modified(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    pkg = repo / "spro_mcore"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("x = 1\n")
    head = _commit(repo, ".")
    monkeypatch.setattr(cr, "_PACKAGE", pkg)
    assert cr.code_revision() == head and re.fullmatch(r"[0-9a-f]{12}", head)
    (repo / "notes.txt").write_text("outside the package: not a code change\n")
    assert cr.code_revision() == head
    (pkg / "b.py").write_text("")  # a new module in the package may be imported: a code change
    assert cr.code_revision() == head + "+modified"
    (pkg / "b.py").unlink()
    (pkg / "a.py").write_text("x = 2\n")
    assert cr.code_revision() == head + "+modified"


def test_outside_a_checkout_the_installed_version(tmp_path, monkeypatch):
    monkeypatch.setattr(cr, "_PACKAGE", tmp_path / "site-packages" / "spro_mcore")
    (tmp_path / "site-packages" / "spro_mcore").mkdir(parents=True)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no enclosing repository up the tree
    assert cr.code_revision().endswith("(not a git checkout)")
    # installed into a .venv inside some checkout: that repository's HEAD is not this package's revision
    repo = tmp_path / "repo"
    pkg = repo / ".venv" / "site-packages" / "spro_mcore"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (repo / "README").write_text("x\n")
    _commit(repo, "README")
    monkeypatch.setattr(cr, "_PACKAGE", pkg)
    assert cr.code_revision().endswith("(not a git checkout)")
