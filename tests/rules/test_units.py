"""UCUM conversion (knowledge base Part B5)."""

from __future__ import annotations

import pytest

from rules.engine.codes.units import canonical_unit, convert


@pytest.mark.parametrize(
    ("value", "unit", "target", "expected"),
    [
        (100.4, "[degF]", "Cel", 38.0),
        (38.0, "Cel", "[degF]", 100.4),
        (311.15, "K", "Cel", 38.0),
        (38.5, "°C", "Cel", 38.5),
        (101.0, "°F", "Cel", 38.333),
        (2.0, "mg/dL", "mg/L", 20.0),
        (154.0, "[lb_av]", "kg", 69.853),
        (70000.0, "g", "kg", 70.0),
        (12.0, "10*3/uL", "10*9/L", 12.0),
        (40.0, "mm/[hr]", "mm/h", 40.0),
    ],
)
def test_conversions(value: float, unit: str, target: str, expected: float) -> None:
    result = convert(value, unit, target)
    assert result == pytest.approx(expected, abs=0.001)


@pytest.mark.parametrize(
    ("unit", "target"), [("kg", "Cel"), ("Cel", "kg"), ("furlongs", "Cel"), (None, "Cel"), ("mg/L", "mm/h")]
)
def test_incompatible_or_unknown_units(unit: str | None, target: str) -> None:
    assert convert(1.0, unit, target) is None


def test_canonical_spellings() -> None:
    assert canonical_unit(" °F ") == "[degF]"
    assert canonical_unit("Cel") == "Cel"
    assert canonical_unit("C") is None  # coulomb in UCUM: never guessed as Celsius
