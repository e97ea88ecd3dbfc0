"""Every config field is exercised by a named test or refused by validation (registry: schema_coverage.py).

The schema is enumerated from its dataclasses, so a new field without a registry entry fails here; the named
tests are looked up in their files (by function name, without importing them), so an entry cannot outlive a
renamed or deleted test; a refused value must really be refused, with one line naming its field.
"""

from __future__ import annotations

import ast
import dataclasses
from functools import lru_cache
from pathlib import Path

import pytest

from spro_mcore.config import ConfigError, load_config
from spro_mcore.config.schema import Config
from tests.config.schema_coverage import EXERCISED, PENDING, REFUSED

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def schema_fields(cls=Config, prefix: str = "") -> list[str]:
    """Every leaf field of the schema as section.key."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += schema_fields(type(default), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


FIELDS = schema_fields()


@lru_cache(maxsize=None)
def _test_functions(path: str) -> frozenset[str]:
    """Names of the top-level test functions (and test methods) in a test file."""
    tree = ast.parse((ROOT / path).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{n.name}" for n in node.body if isinstance(n, ast.FunctionDef))
    return frozenset(n for n in names if n.split("::")[-1].startswith("test_"))


def test_registry_names_only_schema_fields_once():
    seen = list(EXERCISED) + list(REFUSED) + list(PENDING)
    unknown = sorted(set(seen) - set(FIELDS))
    assert not unknown, f"registry entries for fields not in the schema: {unknown}"
    twice = sorted({f for f in seen if seen.count(f) > 1} - set(PENDING))
    assert not twice, f"fields in more than one of EXERCISED / REFUSED: {twice}"


def test_schema_enumeration_sees_every_section():
    assert {f.split(".")[0] for f in FIELDS} == {f.name for f in dataclasses.fields(Config)}
    assert len(FIELDS) > 80


@pytest.mark.parametrize("field", [
    pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=PENDING[f])) if f in PENDING else f for f in FIELDS])
def test_field_is_exercised_or_refused(field):
    assert field in EXERCISED or field in REFUSED, (
        f"config field {field} is neither exercised by a test nor refused by validation: add a test and name it "
        f"in tests/config/schema_coverage.py (EXERCISED), or refuse it in spro_mcore/config/unwired.py (REFUSED)")
    if field in REFUSED:
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{field}={REFUSED[field]}"])
        assert str(e.value).startswith(f"{field}=") and "\n" not in str(e.value)
        return
    assert EXERCISED[field], f"{field}: no test named"
    for ref in EXERCISED[field]:
        path, _, name = ref.partition("::")
        assert (ROOT / path).is_file(), f"{field}: {path} does not exist"
        assert name in _test_functions(path), f"{field}: {path} has no test function {name}"
