"""FHIR dates as UTC ranges, including partial dates (knowledge base Part B3)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cds_hooks.fhirtime import parse_fhir_datetime


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2024", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2024-02", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2023-02", datetime(2023, 2, 1, tzinfo=UTC), datetime(2023, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)),
        (
            "2024-05-03",
            datetime(2024, 5, 3, tzinfo=UTC),
            datetime(2024, 5, 3, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-05-03T10:00:00+02:00",
            datetime(2024, 5, 3, 8, tzinfo=UTC),
            datetime(2024, 5, 3, 8, tzinfo=UTC),
        ),
        ("2024-05-03T10:00:00Z", datetime(2024, 5, 3, 10, tzinfo=UTC), datetime(2024, 5, 3, 10, tzinfo=UTC)),
        (
            "2024-05-03T10:00:00.123456789Z",
            datetime(2024, 5, 3, 10, 0, 0, 123456, tzinfo=UTC),
            datetime(2024, 5, 3, 10, 0, 0, 123456, tzinfo=UTC),
        ),
        ("2024-05-03T10:00:00", datetime(2024, 5, 3, 10, tzinfo=UTC), datetime(2024, 5, 3, 10, tzinfo=UTC)),
        (
            "2016-12-31T23:59:60Z",
            datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC),
            datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC),
        ),
    ],
)
def test_ranges(text: str, start: datetime, end: datetime) -> None:
    parsed = parse_fhir_datetime(text)
    assert (parsed.start, parsed.end) == (start, end)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "24",
        "2024-13",
        "2024-02-30",
        "2024-5-3",
        "2024-05-03T25:00:00Z",
        "2024-05-03 10:00",
        "tomorrow",
        "0000",
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(ValueError, match=r"FHIR date|no such day"):
        parse_fhir_datetime(text)
