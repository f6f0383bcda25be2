"""The committed JSON Schemas equal what the models generate, and accept every file of the catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from rules import BUNDLED_CATALOG
from rules.engine.model.jsonschema import SCHEMA_DIR, generate
from rules.engine.model.source import read_yaml


def test_committed_schemas_are_current() -> None:
    for name, text in generate().items():
        committed = (SCHEMA_DIR / name).read_text(encoding="utf-8")
        assert committed == text, f"rules/schema/{name} is stale: run `make schema`"


def _load(path: Path) -> object:
    document, problems = read_yaml(path, str(path))
    assert document is not None, problems
    return document.data


FILES = sorted(BUNDLED_CATALOG.glob("*.yaml")) + sorted((BUNDLED_CATALOG / "valuesets").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_catalogue_file_validates_against_its_schema(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema="), "the file should point editors at its schema"
    schema = json.loads((path.parent / first.split("=", 1)[1]).read_text(encoding="utf-8"))
    jsonschema.validate(_load(path), schema)


def test_the_schema_rejects_a_mistake() -> None:
    schema = json.loads((SCHEMA_DIR / "rule.schema.json").read_text(encoding="utf-8"))
    rule = _load(BUNDLED_CATALOG / "rf-ces-sphincter-disturbance.yaml")
    assert isinstance(rule, dict)
    rule["indicator"] = "urgent"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, schema)
    rule["indicator"] = "critical"
    rule["when"] = {"age": {"gt": 50}, "gender": "male"}  # a condition has exactly one key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, schema)
