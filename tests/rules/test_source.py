"""The YAML reader of rule files: YAML 1.2 scalars, positions for every key, item and value, and errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rules.engine.model.source import SourceDocument, read_yaml


def _read(text: str) -> SourceDocument:
    document, problems = read_yaml(Path("x.yaml"), "x.yaml", text.encode())
    assert document is not None, problems
    return document


def _error(text: str | bytes) -> str:
    content = text.encode() if isinstance(text, str) else text
    document, problems = read_yaml(Path("x.yaml"), "x.yaml", content)
    assert document is None
    assert len(problems) == 1
    return problems[0].render()


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("no", "no"),  # YAML 1.1 booleans stay strings (a Norwegian "no", an "on" flag)
        ("yes", "yes"),
        ("on", "on"),
        ("Off", "Off"),
        ("true", True),
        ("FALSE", False),
        ("~", None),
        ("null", None),
        ("", None),
        ("12", 12),
        ("-3", -3),
        ("0440", 440),  # YAML 1.2: decimal, not octal
        ("0o17", 15),
        ("0x1F", 31),
        ("37.9", 37.9),
        ("1e3", 1000.0),
        (".inf", math.inf),
        ("-.Inf", -math.inf),
        ("2026-11-21", "2026-11-21"),  # dates are FHIR values: strings
        ("2026-11-21T10:00:00Z", "2026-11-21T10:00:00Z"),
        ("1_000", "1_000"),
        ("'true'", "true"),
        ('"12"', "12"),
        ("!!str 12", "12"),
        ("!!int '12'", 12),
        ("!!float 3", 3.0),
        ("loinc:30679-5 stat", "loinc:30679-5 stat"),
    ],
)
def test_scalars_follow_yaml_1_2(written: str, value: object) -> None:
    got = _read(f"key: {written}\n").data["key"]
    assert got == value and type(got) is type(value), (written, got)


def test_not_a_number() -> None:
    assert math.isnan(_read("key: .nan\n").data["key"])


def test_block_scalars_and_aliases() -> None:
    data = _read("a: |\n  one\n  two\nb: >-\n  folded\n  text\nc: &x [1, no]\nd: *x\n").data
    assert data == {"a": "one\ntwo\n", "b": "folded text", "c": [1, "no"], "d": [1, "no"]}


def test_positions_of_keys_values_and_items() -> None:
    document = _read("id: rf-x\nwhen:\n  any:\n    - finding: {valueset: fever}\n    - age: {gt: 50}\n")
    assert document.positions[("id",)] == (1, 1)
    assert document.values[("id",)] == (1, 5)
    assert document.positions[("when", "any")] == (3, 3)
    assert document.positions[("when", "any", 1)] == (5, 7)
    assert document.positions[("when", "any", 0, "finding", "valueset")] == (4, 17)
    assert document.values[("when", "any", 1, "age")] == (5, 12)
    assert document.position(("when", "any", 1, "age", "missing")) == (5, 7)  # the nearest parent key


def test_a_duplicate_key_is_an_error_where_it_is_written_again() -> None:
    message = _error("id: a\ncategory: red-flag\ncategory: test\n")
    assert message == (
        "x.yaml:3:1: error: invalid YAML: found duplicate key 'category' (first written on line 2)"
    )


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("a: [unclosed\nb: 1\n", "x.yaml:2:2:", "did not find expected ',' or ']'"),
        ("a: 1\n  b: 2\n", "x.yaml:2:4:", "mapping values are not allowed"),
        ("a: 1\n---\nb: 2\n", "x.yaml:2:1:", "expected a single document"),
        ("base: &b {x: 1}\nother:\n  <<: *b\n", "x.yaml:3:3:", "merge keys (<<) are not supported"),
        ("? [a, b]\n: 1\n", "x.yaml:1:3:", "a mapping key must be a plain value"),
        ("a: !!int twelve\n", "x.yaml:1:4:", "unsupported tag tag:yaml.org,2002:int"),
        ("a: !custom 1\n", "x.yaml:1:4:", "unsupported tag !custom"),
    ],
)
def test_errors_are_located(text: str, where: str, words: str) -> None:
    message = _error(text)
    assert message.startswith(where), message
    assert words in message, message


def test_bytes_that_are_not_utf8() -> None:
    assert _error(b"a: \xff\n").startswith("x.yaml:1:1: error: cannot read file:")


def test_an_empty_file_has_no_data() -> None:
    assert _read("# only a comment\n").data is None
