"""UCUM unit conversion for the quantities the rules compare (knowledge base Part B5).

Temperatures convert between Cel, [degF] and K; the other dimensions scale by a factor. The few
human-readable spellings EHRs put in ``Quantity.unit`` (°C, °F, lb) are accepted as well.
"""

from __future__ import annotations

from collections.abc import Callable

_TEMPERATURE: dict[str, tuple[Callable[[float], float], Callable[[float], float]]] = {
    # unit: (to Celsius, from Celsius)
    "Cel": (lambda v: v, lambda c: c),
    "[degF]": (lambda v: (v - 32.0) * 5.0 / 9.0, lambda c: c * 9.0 / 5.0 + 32.0),
    "K": (lambda v: v - 273.15, lambda c: c + 273.15),
}

# unit: (dimension, factor to the dimension's base unit)
_SCALED: dict[str, tuple[str, float]] = {
    "kg": ("mass", 1.0),
    "g": ("mass", 0.001),
    "[lb_av]": ("mass", 0.45359237),
    "mg/L": ("mass-concentration", 1.0),
    "mg/dL": ("mass-concentration", 10.0),
    "g/L": ("mass-concentration", 1000.0),
    "mm/h": ("rate", 1.0),
    "mm/[hr]": ("rate", 1.0),
    "10*9/L": ("count", 1.0),
    "10*3/uL": ("count", 1.0),
    "/nL": ("count", 1.0),
    "mmol/L": ("substance", 1.0),
    "meq/L": ("substance", 1.0),  # monovalent ions (potassium)
    "U/L": ("activity", 1.0),
    "mL": ("volume", 1.0),
    "L": ("volume", 1000.0),
    "/[HPF]": ("per-field", 1.0),
    "{score}": ("score", 1.0),
    "1": ("score", 1.0),
}

_UNITLESS = frozenset({"{score}", "1"})

_SPELLINGS = {
    "°C": "Cel",
    "degC": "Cel",
    "C°": "Cel",
    "°F": "[degF]",
    "degF": "[degF]",
    "F°": "[degF]",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "mm/hr": "mm/h",
    "x10^9/L": "10*9/L",
    "10^9/L": "10*9/L",
    "x10^3/uL": "10*3/uL",
    "K/uL": "10*3/uL",
    "mEq/L": "meq/L",
    "IU/L": "U/L",
}


def canonical_unit(unit: str | None) -> str | None:
    """The UCUM code for a unit string, or None when it is not one the service knows."""
    if unit is None:
        return None
    unit = _SPELLINGS.get(unit.strip(), unit.strip())
    return unit if unit in _TEMPERATURE or unit in _SCALED else None


def convert(value: float, unit: str | None, target: str) -> float | None:
    """Convert ``value`` from ``unit`` to ``target``; None when either is unknown or they do not match.

    A score (``{score}`` or ``1``) also accepts a value without a unit, such as an Observation.valueInteger.
    """
    if target in _UNITLESS and (unit is None or unit.strip() in _UNITLESS or not unit.strip()):
        return value
    source = canonical_unit(unit)
    if source is None:
        return None
    if source in _TEMPERATURE:
        if target not in _TEMPERATURE:
            return None
        return _TEMPERATURE[target][1](_TEMPERATURE[source][0](value))
    if source not in _SCALED or target not in _SCALED:
        return None
    (dim, factor), (target_dim, target_factor) = _SCALED[source], _SCALED[target]
    return value * factor / target_factor if dim == target_dim else None


def known_target(unit: str) -> bool:
    """Whether ``unit`` can be a comparison unit in a rule."""
    return unit in _TEMPERATURE or unit in _SCALED


# How a clinician writes the units a card shows (UCUM codes are for machines: "Cel", "10*9/L").
_HUMAN: dict[str, str] = {
    "Cel": "°C",
    "[degF]": "°F",
    "10*9/L": "×10⁹/L",
    "10*12/L": "×10¹²/L",
    "10*3/uL": "×10³/µL",
    "/nL": "/nL",
    "ug/L": "µg/L",
    "umol/L": "µmol/L",
    "mm[Hg]": "mmHg",
    "[lb_av]": "lb",
    "mm/[hr]": "mm/h",
    "/[HPF]": "/HPF",
    "{score}": "",
    "1": "",
}


def human_unit(unit: str | None) -> str:
    """A UCUM unit as a card shows it ("Cel" -> "°C"); other spellings unchanged."""
    if unit is None:
        return ""
    return _HUMAN.get(unit, unit)


def human_quantity(value: float, unit: str | None) -> str:
    """``38.6 °C``, ``14.2 ×10⁹/L``, ``32 mg/L``, a score as its number."""
    shown = human_unit(unit)
    separator = "" if shown in ("", "%") or shown.startswith("/") else " "
    return f"{value:.4g}{separator}{shown}"
