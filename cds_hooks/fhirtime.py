"""FHIR date, dateTime and instant values, including partial dates, as UTC intervals.

FHIR R4 allows ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` and full date-times. A partial value names a span of
time, so it is parsed into the earliest and the latest instant it can mean. Values without a time zone
(dates, and lenient date-times) are read as UTC: the windows the rules use are counted in days, so the
difference does not change a decision.
"""

from __future__ import annotations

import calendar
import functools
import re
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

# FHIR R4 dateTime regex (datatypes.html#dateTime), also accepting a time without a zone.
FHIR_DATETIME_PATTERN = (
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
    r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?"
    r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))?)?)?)?$"
)
_DATETIME_RE = re.compile(FHIR_DATETIME_PATTERN)
_FRACTION_RE = re.compile(r"\.(\d+)")


class FhirInstantRange(NamedTuple):
    """The span of time a FHIR date or dateTime can mean: ``start <= instant <= end``."""

    start: datetime
    end: datetime


@functools.lru_cache(maxsize=8192)  # a request's dates are parsed when validated and again when normalised
def parse_fhir_datetime(text: str) -> FhirInstantRange:
    """Parse a FHIR date/dateTime (possibly partial) into a UTC range.

    Args:
        text: the value as it appears in the resource, e.g. ``"2024"``, ``"2024-05-03"``,
            ``"2024-05-03T10:00:00+02:00"``.

    Returns:
        The earliest and latest UTC instants the value can denote.

    Raises:
        ValueError: the value is not a FHIR date or dateTime, or names a day that does not exist.
    """
    if not _DATETIME_RE.match(text):
        raise ValueError(f"not a FHIR date or dateTime: {text!r}")
    year = int(text[0:4])
    if len(text) == 4:
        return FhirInstantRange(
            datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC) - _TICK
        )
    month = int(text[5:7])
    if len(text) == 7:
        last = calendar.monthrange(year, month)[1]
        start = datetime(year, month, 1, tzinfo=UTC)
        return FhirInstantRange(start, start + timedelta(days=last) - _TICK)
    day = int(text[8:10])
    if day > calendar.monthrange(year, month)[1]:
        raise ValueError(f"no such day: {text!r}")
    if len(text) == 10:
        start = datetime(year, month, day, tzinfo=UTC)
        return FhirInstantRange(start, start + timedelta(days=1) - _TICK)
    # Python parses at most 6 fractional digits; FHIR allows 9.
    value = _FRACTION_RE.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text.replace("Z", "+00:00"))
    if text[17:19] == "60":  # leap second: FHIR allows it, Python does not
        value = value[:17] + "59" + value[19:]
    moment = datetime.fromisoformat(value)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return FhirInstantRange(moment, moment)


def check_fhir_datetime(text: str) -> str:
    """Pydantic validator: accept ``text`` only if it is a real FHIR date or dateTime."""
    parse_fhir_datetime(text)
    return text


_TICK = timedelta(microseconds=1)
