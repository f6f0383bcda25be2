"""JSON Schemas of the rule-file language, generated from the pydantic models, for editors.

Rule files start with ``# yaml-language-server: $schema=../schema/rule.schema.json`` so YAML-aware editors
(VS Code with the Red Hat YAML extension, IntelliJ) complete keys and underline mistakes as you type. The
committed files under ``rules/schema/`` are regenerated with ``make schema``; a test fails when they differ
from what the models generate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rules.engine.model import schema

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
_FILES: dict[str, type[BaseModel]] = {
    "rule.schema.json": schema.RuleFile,
    "valueset.schema.json": schema.ValueSetFile,
    "terminology.schema.json": schema.TerminologyFile,
    "definitions.schema.json": schema.DefinitionsFile,
    "precedence.schema.json": schema.PrecedenceFile,
}
_TITLES = {
    "rule.schema.json": "Lumbar CDS rule file",
    "valueset.schema.json": "Lumbar CDS value set",
    "terminology.schema.json": "Lumbar CDS terminology list",
    "definitions.schema.json": "Lumbar CDS named conditions",
    "precedence.schema.json": "Lumbar CDS precedence tiers",
}


def _one_key(node: Any) -> None:
    """A condition has exactly one key: say so, so editors flag ``{age: ..., finding: ...}``."""
    if isinstance(node, dict):
        defs = node.get("$defs", {})
        if "Condition" in defs:
            defs["Condition"]["minProperties"] = 1
            defs["Condition"]["maxProperties"] = 1
        for value in node.values():
            _one_key(value)


def generate() -> dict[str, str]:
    """File name → JSON text of every schema."""
    out: dict[str, str] = {}
    for name, model in _FILES.items():
        document = model.model_json_schema(by_alias=True, mode="validation")
        document = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **document,
            "title": _TITLES[name],
        }
        _one_key(document)
        out[name] = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    if "--write" in sys.argv:
        for path in write():
            print(path)
    else:
        print(json.dumps({name: json.loads(text) for name, text in generate().items()}, indent=2))
