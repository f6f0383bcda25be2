"""Evidence a clinician reads at a glance: human units, short lab names, the body site, "3 days ago"."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rules.engine.codes.units import human_quantity
from rules.engine.evaluation.cards import when_text
from rules.engine.record.facts import Evidence
from rules.engine.record.normalise import short_name

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (38.6, "Cel", "38.6 °C"),
        (101.3, "[degF]", "101.3 °F"),
        (14.2, "10*9/L", "14.2 ×10⁹/L"),
        (32.0, "mg/L", "32 mg/L"),
        (5.0, "{score}", "5"),
        (12.0, "%", "12%"),
        (4.0, "/[HPF]", "4/HPF"),
        (7.0, "mmol/L", "7 mmol/L"),
    ],
)
def test_units_as_a_clinician_writes_them(value: float, unit: str, shown: str) -> None:
    assert human_quantity(value, unit) == shown


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        ("C reactive protein [Mass/volume] in Serum or Plasma", "C reactive protein"),
        ("Leukocytes [#/volume] in Blood", "Leukocytes"),
        ("Erythrocyte sedimentation rate", "Erythrocyte sedimentation rate"),
        ("Pain [in the back] began last week", "Pain [in the back] began last week"),  # not a LOINC name
        ("Body temperature", "Body temperature"),
    ],
)
def test_lab_names_keep_the_analyte(label: str, shown: str) -> None:
    assert short_name(label) == shown


@pytest.mark.parametrize(
    ("date", "shown"),
    [
        ("2026-11-21T08:00:00Z", "today (2026-11-21)"),
        ("2026-11-20", "yesterday (2026-11-20)"),
        ("2026-11-18T12:00:00+01:00", "3 days ago (2026-11-18)"),
        ("2026-10-31", "3 weeks ago (2026-10-31)"),
        ("2026-06-15", "5 months ago (2026-06-15)"),
        ("2019-03-14", "7 years ago (2019-03-14)"),
        ("2026-11", "2026-11"),  # a partial date, as written
        ("2026-12-01", "2026-12-01"),  # after now: no "ago"
    ],
)
def test_dates_read_as_how_long_ago(date: str, shown: str) -> None:
    assert when_text(date, NOW) == shown


@pytest.mark.parametrize(
    ("label", "site", "named"),
    [
        ("Numbness", "Perineal structure", "Numbness (Perineal structure)"),
        (
            "Numbness of the perineum (saddle area)",
            "Perineal structure",
            "Numbness of the perineum (saddle area)",
        ),
        ("Leg weakness", "left", "Leg weakness (left)"),
        ("Right foot drop", "right", "Right foot drop"),
        ("Numbness of both legs", "both sides", "Numbness of both legs"),
        ("Sciatica", "Lower limb structure, left", "Sciatica (Lower limb structure, left)"),
        ("Sciatica", "", "Sciatica"),
    ],
)
def test_the_site_is_named_once(label: str, site: str, named: str) -> None:
    assert Evidence(label, "present", site=site).named == named
