"""Property-based tests: no input makes the parser or the engine fail with anything but a clean 4xx error."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cds_hooks.outcome import outcome_from_validation
from cds_hooks.request import parse_hook_request
from cds_hooks.response import FEEDBACK
from rules.engine.evaluation.evaluate import evaluate
from tests.support.catalogue import bundled_ruleset

RULESET = bundled_ruleset()
CODES = [
    *sorted(RULESET.builder.relevant),
    ("http://snomed.info/sct", "75367002"),
    ("http://loinc.org", "8310-5"),
]
NOW = datetime(2026, 11, 21, 10, tzinfo=UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_is_parsed_or_rejected_cleanly(value: Any) -> None:
    try:
        parse_hook_request(json.dumps(value))
    except ValidationError as exc:
        assert outcome_from_validation(exc)["issue"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_parsed_or_rejected_cleanly(body: bytes) -> None:
    try:
        parse_hook_request(body)
    except ValidationError as exc:
        assert outcome_from_validation(exc)["issue"]


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_feedback_is_parsed_or_rejected_cleanly(value: Any) -> None:
    with contextlib.suppress(ValidationError):
        FEEDBACK.validate_json(json.dumps({"feedback": [value]}))


dates = st.one_of(
    st.sampled_from(
        [
            "2026",
            "2026-11",
            "2026-11-20",
            "2026-11-20T08:00:00Z",
            "2020-02-29",
            "1900-01-01",
            "2026-11-20T08:00:00+14:00",
            "2999-12-31",
            "2026-11-21T10:00:00.123456789-03:00",
        ]
    ),
    st.dates(min_value=datetime(1900, 1, 1).date(), max_value=datetime(2030, 1, 1).date()).map(str),
)
codings = st.sampled_from(CODES).map(lambda key: {"system": key[0], "code": key[1]})
concepts = st.builds(
    lambda cs, text: {"coding": cs, **({"text": text} if text else {})},
    st.lists(codings, min_size=0, max_size=2),
    st.one_of(st.none(), st.text(max_size=30)),
)
quantities = st.fixed_dictionaries(
    {"value": st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9)},
    optional={
        "unit": st.sampled_from(["Cel", "[degF]", "K", "kg", "mg/dL", "furlong", "°F"]),
        "code": st.sampled_from(["Cel", "[degF]", "K", "kg", "mg/L", "%"]),
        "system": st.just("http://unitsofmeasure.org"),
    },
)
observations = st.fixed_dictionaries(
    {
        "resourceType": st.just("Observation"),
        "code": concepts,
        "status": st.sampled_from(
            ["final", "amended", "preliminary", "entered-in-error", "cancelled", "unknown"]
        ),
    },
    optional={
        "id": st.from_regex(r"[A-Za-z0-9]{1,10}", fullmatch=True),
        "effectiveDateTime": dates,
        "issued": dates,
        "effectivePeriod": st.fixed_dictionaries({}, optional={"start": dates, "end": dates}),
        "valueBoolean": st.booleans(),
        "valueCodeableConcept": concepts,
        "valueQuantity": quantities,
        "interpretation": st.lists(concepts, max_size=2),
        "bodySite": concepts,
        "referenceRange": st.lists(
            st.fixed_dictionaries({}, optional={"high": quantities, "low": quantities}), max_size=2
        ),
        "component": st.lists(
            st.fixed_dictionaries({"code": concepts}, optional={"valueCodeableConcept": concepts}), max_size=2
        ),
        "dataAbsentReason": concepts,
        "subject": st.sampled_from([{"reference": "Patient/p1"}, {"reference": "Patient/other"}, {}]),
    },
)
conditions = st.fixed_dictionaries(
    {"resourceType": st.just("Condition")},
    optional={
        "id": st.from_regex(r"[A-Za-z0-9]{1,10}", fullmatch=True),
        "code": concepts,
        "clinicalStatus": st.sampled_from(["active", "resolved", "remission", "x"]).map(
            lambda c: {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": c}]
            }
        ),
        "verificationStatus": st.sampled_from(["confirmed", "refuted", "entered-in-error"]).map(
            lambda c: {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": c}
                ]
            }
        ),
        "onsetDateTime": dates,
        "recordedDate": dates,
        "abatementDateTime": dates,
        "onsetPeriod": st.fixed_dictionaries({}, optional={"start": dates}),
        "bodySite": st.lists(concepts, max_size=2),
    },
)
others = st.fixed_dictionaries(
    {
        "resourceType": st.sampled_from(
            [
                "MedicationStatement",
                "ServiceRequest",
                "DiagnosticReport",
                "Procedure",
                "Immunization",
                "Encounter",
            ]
        )
    },
    optional={
        "status": st.sampled_from(["active", "completed", "draft", "final", "stopped"]),
        "code": concepts,
        "medicationCodeableConcept": concepts,
        "authoredOn": dates,
        "effectiveDateTime": dates,
        "performedDateTime": dates,
        "effectivePeriod": st.fixed_dictionaries({}, optional={"start": dates, "end": dates}),
    },
)
patients = st.fixed_dictionaries(
    {"resourceType": st.just("Patient")},
    optional={
        "id": st.just("p1"),
        "gender": st.sampled_from(["male", "female", "unknown", "other"]),
        "birthDate": dates,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patients,
    st.lists(st.one_of(observations, conditions, others), max_size=12),
    st.sampled_from(["patient-view", "encounter-start", "order-sign"]),
    st.one_of(st.none(), dates),
)
def test_the_engine_never_fails_on_valid_fhir(
    patient: dict[str, Any], resources: list[dict[str, Any]], hook: str, pain_since: str | None
) -> None:
    if pain_since is not None:  # most cases have low back pain, so the rules do run
        resources = [
            {
                "resourceType": "Condition",
                "id": "lbp",
                "onsetDateTime": pain_since,
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "279039007"}]},
            },
            *resources,
        ]
    context: dict[str, Any] = {"patientId": "p1", "userId": "Practitioner/1"}
    if hook == "encounter-start":
        context["encounterId"] = "e1"
    if hook == "order-sign":
        context["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources[:2]]}
    body = {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": context,
        "prefetch": {
            "patient": patient,
            "all": {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]},
        },
    }
    try:
        request = parse_hook_request(json.dumps(body))
    except ValidationError:
        event("rejected by the parser")
        return
    evaluation = evaluate(RULESET, request, NOW)
    event(f"evaluated: {len(evaluation.cards)} card(s)")
    assert evaluation.errors == {}
    wire = evaluation.response().to_wire()
    json.dumps(wire)
    for card in wire["cards"]:
        assert len(card["summary"]) < 140
