"""Realistic FHIR R4 JSON for tests: the issue's patients, built the way an EHR sends them."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
NOW = "2026-11-21T10:00:00Z"  # when the recordings under tests/fixtures were made (feedback timestamps)
RECORDED = date(2026, 11, 21)
_DATED = re.compile(r"^\d{4}-\d{2}-\d{2}")
_DATE_KEYS = {"effectiveDateTime", "onsetDateTime", "recordedDate", "issued", "authoredOn", "start", "end"}


def as_of_today(value: Any) -> Any:
    """Records dated as of ``RECORDED`` with their clinical dates moved by whole days to today. A running
    service evaluates at the wall clock, so what is sent to it must be dated from today for the rules' time
    windows to hold whatever day the tests run (birth dates stay: ages move by the tests' lifetime only)."""
    shift = datetime.now(UTC).date() - RECORDED
    if isinstance(value, list):
        return [as_of_today(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in _DATE_KEYS and isinstance(item, str) and _DATED.match(item):
            day = date.fromisoformat(item[:10]) + shift
            out[key] = day.isoformat() + item[10:]
        else:
            out[key] = as_of_today(item)
    return out


def patient(pid: str = "pat-45", birth_date: str = "1981-03-02", gender: str = "male") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "gender": gender,
        "birthDate": birth_date,
        "name": [{"family": "Example", "given": ["Alex"]}],
    }


def condition(
    cid: str,
    code: str,
    onset: str,
    pid: str = "pat-45",
    *,
    system: str = SNOMED,
    display: str | None = None,
    clinical: str = "active",
) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": clinical}]},
        "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item",
                    }
                ]
            }
        ],
        "code": {"coding": [coding], "text": display or code},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": onset,
        "recordedDate": onset,
    }


def finding(
    oid: str,
    code: str,
    when: str,
    pid: str = "pat-45",
    *,
    value: bool = True,
    status: str = "final",
    display: str | None = None,
) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": SNOMED, "code": code}
    if display:
        coding["display"] = display
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "exam"}
                ]
            }
        ],
        "code": {"coding": [coding]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueBoolean": value,
    }


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in resources],
    }


def lbp_patient_with_retention(
    *, retention_when: str = "2026-11-20T08:30:00Z", retention_status: str = "final"
) -> list[dict[str, Any]]:
    """The issue's scenario: 45 years old, low back pain since 6 days, urinary retention (dated as of
    ``RECORDED``: wrap in ``as_of_today`` for a running service)."""
    return [
        patient(),
        condition("lbp-1", "279039007", "2026-11-15", display="Low back pain"),
        finding("ret-1", "267064002", retention_when, status=retention_status, display="Retention of urine"),
    ]


def lbp_today(**kwargs: Any) -> list[dict[str, Any]]:
    """``lbp_patient_with_retention`` dated from today, for a running service."""
    records: list[dict[str, Any]] = as_of_today(lbp_patient_with_retention(**kwargs))
    return records


def hook_request(
    hook: str = "patient-view",
    *,
    pid: str = "pat-45",
    prefetch: dict[str, Any] | None = None,
    fhir_server: str | None = None,
    **context: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hookInstance": str(uuid.uuid4()),
        "hook": hook,
        "context": {"patientId": pid, "userId": "Practitioner/COREPRACTITIONER1", **context},
    }
    if fhir_server:
        body["fhirServer"] = fhir_server
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def _bundled_keys() -> tuple[str, ...]:
    from rules.engine.compiler.ruleset import load_ruleset  # only where a test needs the keys

    catalogue = Path(__file__).resolve().parents[2] / "rules" / "catalog"
    return tuple(load_ruleset(catalogue).prefetch["patient-view"])


PATIENT_VIEW_KEYS = _bundled_keys()
"""The prefetch keys the bundled patient-view service asks for (generated from the rules)."""


def sandbox_patient_view() -> dict[str, Any]:
    """``tests/fixtures/sandbox-patient-view.json`` with the keys today's discovery adds that the recording
    lacks filled as the sandbox fills them: it runs every template against its FHIR server, and a search
    that finds nothing is an empty Bundle (rule edits add and split keys; the recording stays as sent)."""
    import json

    body: dict[str, Any] = as_of_today(
        json.loads(
            (Path(__file__).resolve().parents[1] / "fixtures" / "sandbox-patient-view.json").read_text()
        )
    )
    for key in PATIENT_VIEW_KEYS:
        body["prefetch"].setdefault(key, bundle())
    return body


def fhir_authorization(access_token: str) -> dict[str, Any]:
    """A CDS Hooks ``fhirAuthorization`` object as an EHR sends it."""
    return {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "lumbar-cds",
    }


def prefetch_for(resources: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Fill every key of a discovery service the way an EHR would: Patient read, searches as Bundles."""
    types = {
        "conditions": "Condition",
        "observations": "Observation",
        "medications": "MedicationStatement",
        "medicationrequests": "MedicationRequest",
        "servicerequests": "ServiceRequest",
        "diagnosticreports": "DiagnosticReport",
        "procedures": "Procedure",
    }
    out: dict[str, Any] = {}
    for key in keys:
        if key == "patient":
            out[key] = next((r for r in resources if r["resourceType"] == "Patient"), None)
        elif key.partition("-")[2]:
            out[key] = bundle()  # a long search split in parts: the first part carries every resource
        else:
            # a MedicationRequest search may carry the Medications it names (as with _include)
            wanted = {types[key], "Medication"} if key == "medicationrequests" else {types[key]}
            out[key] = bundle(*(r for r in resources if r["resourceType"] in wanted))
    return out


def patient_view_request(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A patient-view request whose prefetch holds ``resources``, every key of the service filled."""
    return hook_request(prefetch=prefetch_for(resources, list(PATIENT_VIEW_KEYS)))


def preflight(method: str, headers: str, origin: str = "https://sandbox.cds-hooks.org") -> dict[str, str]:
    """The headers of a browser's CORS preflight for a ``method`` call sending ``headers``."""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def accepted(card: dict[str, Any], at: str = NOW) -> dict[str, Any]:
    """A feedback item accepting ``card``'s first suggestion."""
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": at,
    }


def overridden(card: dict[str, Any], reason: dict[str, Any], comment: str, at: str = NOW) -> dict[str, Any]:
    """A feedback item overriding ``card`` with ``reason`` (a Coding) and a comment."""
    return {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": reason, "userComment": comment},
        "outcomeTimestamp": at,
    }
