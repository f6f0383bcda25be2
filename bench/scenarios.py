"""The benchmark's CDS Hooks requests, built with the test suite's builders (``tests/support/builders.py``).

- ``cauda-equina``: the issue's patient (45, low back pain for 6 days, urinary retention yesterday): one
  critical card.
- ``acute-lbp``: plain acute low back pain, no red flag: the advice cards.
- ``obs-50``, ``obs-500``, ``obs-5000``: ``acute-lbp`` plus that many Observations over two years, 60% with
  codes the rules read (temperature, CRP, ESR, white cells, body weight, negated urinary retention) and 40%
  with codes no rule reads (heart rate, blood pressure, glucose, headache). Values are normal, so the cards
  stay those of ``acute-lbp`` while every rule still has to look at the records.

Dates are relative to ``now``: the service evaluates at the wall clock.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the test builders live in the repository, not in the installed package
    sys.path.insert(0, str(ROOT))

from tests.support import builders  # noqa: E402  # after the path fix above

SERVICE_PATH = "/cds-services/lumbar-patient-view"
SCALES = (50, 500, 5000)
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# (code, display, category, unit, first value, step, values): the rules read these (rules/catalog/valuesets).
READ_QUANTITIES = (
    ("8310-5", "Body temperature", "vital-signs", "Cel", 36.4, 0.1, 7),
    ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "laboratory", "mg/L", 1.0, 0.5, 8),
    ("4537-7", "Erythrocyte sedimentation rate by Westergren method", "laboratory", "mm/h", 4.0, 1.0, 10),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "laboratory", "10*3/uL", 5.0, 0.4, 10),
    ("29463-7", "Body weight", "vital-signs", "kg", 80.0, 0.1, 5),
)
# ... and no rule reads these.
UNREAD_QUANTITIES = (
    ("8867-4", "Heart rate", "vital-signs", "/min", 62.0, 2.0, 10),
    ("8480-6", "Systolic blood pressure", "vital-signs", "mm[Hg]", 112.0, 2.0, 10),
    ("2339-0", "Glucose [Mass/volume] in Blood", "laboratory", "mg/dL", 82.0, 2.0, 8),
)
READ_FINDING = ("267064002", "Retention of urine")  # recorded as absent (valueBoolean false)
UNREAD_FINDING = ("25064002", "Headache")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity(
    oid: str, spec: tuple[str, str, str, str, float, float, int], when: str, index: int
) -> dict[str, Any]:
    code, display, category, unit, first, step, count = spec
    value = round(first + step * (index % count), 2)
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": builders.LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": "Patient/pat-45"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def observations(count: int, now: datetime) -> list[dict[str, Any]]:
    """``count`` Observations, newest an hour ago, oldest two years ago; 6 in 10 have codes the rules read."""
    out = []
    span_hours = 2 * 365 * 24
    for i in range(count):
        when = _iso(now - timedelta(hours=1 + span_hours * i / count))
        kind, oid = i % 10, f"obs-{i}"
        if kind < 5:
            out.append(quantity(oid, READ_QUANTITIES[kind], when, i))
        elif kind == 5:
            code, display = READ_FINDING
            out.append(builders.finding(oid, code, when, value=False, display=display))
        elif kind < 9:
            out.append(quantity(oid, UNREAD_QUANTITIES[kind - 6], when, i))
        else:
            code, display = UNREAD_FINDING
            out.append(builders.finding(oid, code, when, value=False, display=display))
    return out


def _request(resources: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(builders.patient_view_request(resources))


def acute_lbp(now: datetime) -> list[dict[str, Any]]:
    onset = (now - timedelta(days=6)).date().isoformat()
    return [builders.patient(), builders.condition("lbp-1", "279039007", onset, display="Low back pain")]


def build(now: datetime) -> dict[str, bytes]:
    """Every scenario's request body, by name."""
    cauda = builders.lbp_patient_with_retention(retention_when=_iso(now - timedelta(hours=25)))
    for resource in cauda:  # the builder's pain began on a fixed date: keep it 6 days before now
        if resource["resourceType"] == "Condition":
            resource["onsetDateTime"] = resource["recordedDate"] = (
                (now - timedelta(days=6)).date().isoformat()
            )
    out = {"cauda-equina": _request(cauda), "acute-lbp": _request(acute_lbp(now))}
    for count in SCALES:
        out[f"obs-{count}"] = _request(acute_lbp(now) + observations(count, now))
    return out
