"""The loader against malformed rule files: any value anywhere replaced by junk is a located error
(``RuleSetError``) or a valid catalogue, never a crash (a crash once killed the file watchers).

``FUZZ_EXAMPLES=400 pytest tests/rules/test_loader_fuzz.py`` for a longer run (60 examples by default)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import BUNDLED_CATALOG
from rules.engine import RuleSet, RuleSetError, load_ruleset

FILES = [
    "rf-ces-sphincter-disturbance.yaml",
    "dx-axial-spondyloarthritis.yaml",
    "test-imaging-order-not-indicated.yaml",
    "definitions.yaml",
    "precedence.yaml",
    "valuesets/sphincter-disturbance.yaml",
    "terminology.yaml",
]
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(
        st.text(max_size=6), st.one_of(st.none(), st.integers(), st.text(max_size=5)), max_size=3
    ),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


def _replaced(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[head] = _replaced(node[head], rest, value)
    return copy


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("fuzz") / "catalog"
    shutil.copytree(BUNDLED_CATALOG, target)
    return target


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_junk_anywhere_is_a_located_error_never_a_crash(workspace: Path, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(FILES))
    original = (BUNDLED_CATALOG / name).read_text()
    tree = yaml.safe_load(original)
    path = data.draw(st.sampled_from(_paths(tree)))
    junk = data.draw(JUNK)
    target = workspace / name
    target.write_text(yaml.safe_dump(_replaced(tree, path, junk), allow_unicode=True, sort_keys=False))
    try:
        result = load_ruleset(workspace)
        assert isinstance(result, RuleSet)
    except RuleSetError as exc:
        errors = [d for d in exc.diagnostics if d.severity == "error"]
        assert errors, "refused without an error"
        assert all(d.line >= 1 and d.column >= 1 for d in errors)
        assert not any("could not be loaded" in d.message for d in errors), [d.render() for d in errors]
    finally:
        target.write_text(original)
