"""CDS Hooks 2.0 wire models: parsing real request shapes, rejecting bad ones, serialising without empties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from cds_hooks.outcome import json_path, outcome_from_validation
from cds_hooks.request import OrderSelectRequest, PatientViewRequest, parse_hook_request
from cds_hooks.resources import Bundle, Observation, OtherResource
from cds_hooks.response import FEEDBACK, Action, Card, CdsResponse, Coding, Link, Source, Suggestion

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _request(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
    }
    body.update(overrides)
    return body


def test_sandbox_patient_view_shape_parses() -> None:
    request = parse_hook_request((FIXTURES / "sandbox-patient-view.json").read_bytes())
    assert isinstance(request, PatientViewRequest)
    assert request.context.patient_id == "pat-45"
    conditions = request.prefetch["conditions"]
    assert isinstance(conditions, Bundle)
    assert conditions.entry[0].resource is not None


def test_sandbox_pama_order_select_shape_parses_bundle_without_type() -> None:
    request = parse_hook_request((FIXTURES / "sandbox-pama-order-select.json").read_bytes())
    assert isinstance(request, OrderSelectRequest)
    assert request.context.draft_orders.type is None
    assert request.context.selections == ("ServiceRequest/example-request-id",)


def test_unknown_resource_types_in_a_bundle_are_kept_not_rejected() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Immunization", "id": "i1"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}},
        ],
    }
    request = parse_hook_request(json.dumps(_request(prefetch={"x": bundle})))
    parsed = request.prefetch["x"]
    assert isinstance(parsed, Bundle)
    assert isinstance(parsed.entry[0].resource, OtherResource)
    assert isinstance(parsed.entry[1].resource, Observation)


def test_unknown_top_level_and_context_fields_are_ignored() -> None:
    request = parse_hook_request(
        json.dumps(
            _request(
                user="Practitioner/1",
                context={"userId": "Practitioner/1", "patientId": "p1", "futureField": 1},
            )
        )
    )
    assert request.hook == "patient-view"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"hook": "patient-vue"}, "hook"),
        ({"hookInstance": "not-a-uuid"}, "hookInstance"),
        ({"context": {"userId": "Practitioner/1"}}, "context.patientId"),
        ({"context": {"userId": "Practitioner/1", "patientId": "a b"}}, "context.patientId"),
        ({"context": {"userId": "nobody", "patientId": "p1"}}, "context.userId"),
        ({"fhirServer": "ftp://x"}, "fhirServer"),
        ({"fhirServer": "https://user:pw@x.org/fhir"}, "fhirServer"),
        (
            {
                "prefetch": {
                    "p": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {},
                        "valueBoolean": "true",
                    }
                }
            },
            "prefetch.p.valueBoolean",
        ),
        (
            {
                "prefetch": {
                    "p": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {},
                        "effectiveDateTime": "2024-02-30",
                    }
                }
            },
            "prefetch.p.effectiveDateTime",
        ),
        ({"prefetch": {"p": {"resourceType": "Patient", "birthDate": "yesterday"}}}, "prefetch.p.birthDate"),
        (
            {
                "prefetch": {
                    "p": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {},
                        "valueQuantity": {"value": "38"},
                    }
                }
            },
            "prefetch.p.valueQuantity.value",
        ),
    ],
)
def test_invalid_requests_name_the_field(change: dict[str, object], path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_hook_request(json.dumps(_request(**change)))
    outcome = outcome_from_validation(caught.value)
    assert outcome["resourceType"] == "OperationOutcome"
    assert path in [issue["expression"][0] for issue in outcome["issue"]]


def test_access_token_requires_a_fhir_server_and_is_never_shown() -> None:
    auth = {
        "access_token": "s3cr3t-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "lumbar",
    }
    with pytest.raises(ValidationError, match="fhirServer is required"):
        parse_hook_request(json.dumps(_request(fhirAuthorization=auth)))
    request = parse_hook_request(
        json.dumps(_request(fhirAuthorization=auth, fhirServer="https://ehr.example/fhir"))
    )
    assert "s3cr3t-token" not in repr(request)
    assert "s3cr3t-token" not in str(request.fhir_authorization)
    assert request.fhir_authorization is not None
    assert request.fhir_authorization.access_token.get_secret_value() == "s3cr3t-token"


def test_order_select_needs_selections_and_draft_orders() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_hook_request(json.dumps(_request(hook="order-select")))
    paths = {issue["expression"][0] for issue in outcome_from_validation(caught.value)["issue"]}
    assert {"context.selections", "context.draftOrders"} <= paths


def test_encounter_start_requires_encounter_id() -> None:
    with pytest.raises(ValidationError):
        parse_hook_request(json.dumps(_request(hook="encounter-start")))
    parse_hook_request(
        json.dumps(
            _request(
                hook="encounter-start",
                context={"userId": "PractitionerRole/1", "patientId": "p1", "encounterId": "e1"},
            )
        )
    )


def _walk(value: object) -> list[object]:
    out = [value]
    if isinstance(value, dict):
        for item in value.values():
            out.extend(_walk(item))
    elif isinstance(value, list):
        for item in value:
            out.extend(_walk(item))
    return out


def test_responses_serialise_without_null_or_empty_values_but_keep_cards() -> None:
    empty = CdsResponse().to_wire()
    assert empty == {"cards": []}
    card = Card(
        summary="A summary",
        indicator="info",
        source=Source(label="Guideline"),
        detail=None,
        links=(Link(label="NICE", url="https://nice.org.uk", type="absolute"),),
    )
    wire = CdsResponse(cards=(card,)).to_wire()
    for value in _walk(wire["cards"]):
        assert value not in (None, "", [], {})
    assert wire["cards"][0]["links"][0] == {"label": "NICE", "url": "https://nice.org.uk", "type": "absolute"}
    assert "selectionBehavior" not in wire["cards"][0]


def test_card_rules_from_the_specification() -> None:
    source = Source(label="x")
    with pytest.raises(ValidationError):  # summary "<140-character"
        Card(summary="x" * 140, indicator="info", source=source)
    with pytest.raises(ValidationError, match="selectionBehavior"):
        Card(summary="s", indicator="info", source=source, suggestions=(Suggestion(label="l"),))
    with pytest.raises(ValidationError, match="display"):
        Card(summary="s", indicator="info", source=source, override_reasons=(Coding(code="x"),))
    with pytest.raises(ValidationError, match="resourceId"):
        Action(type="delete", description="remove")
    with pytest.raises(ValidationError):
        Card(summary="s", indicator="urgent", source=source)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        {
            "feedback": [
                {
                    "card": "c",
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": "s"}],
                    "outcomeTimestamp": "2026-11-21T10:00:00.123Z",
                }
            ]
        },
        {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:00:00Z"}]},
        {
            "feedback": [
                {
                    "card": "c",
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-11-21T10:00:00Z",
                    "overrideReason": {"reason": {"code": "already-managed", "system": "urn:x"}},
                }
            ]
        },
        {
            "feedback": [
                {
                    "card": "c",
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-11-21T10:00:00Z",
                    "overrideReason": {"reason": {"code": "x", "display": "X"}, "userComment": "seen"},
                }
            ]
        },
    ],
)
def test_valid_feedback(body: dict[str, object]) -> None:
    FEEDBACK.validate_json(json.dumps(body))


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"feedback": []},
        {"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-21T10:00:00Z"}]},
        {"feedback": [{"card": "c", "outcome": "ignored", "outcomeTimestamp": "2026-11-21T10:00:00Z"}]},
        {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
        {"feedback": [{"card": "c", "outcome": "overridden"}]},
        {
            "feedback": [
                {
                    "card": "c",
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": "s"}],
                    "overrideReason": {"userComment": "x"},
                    "outcomeTimestamp": "2026-11-21T10:00:00Z",
                }
            ]
        },
    ],
)
def test_invalid_feedback(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FEEDBACK.validate_json(json.dumps(body))


def test_json_path_rendering() -> None:
    assert json_path(("prefetch", "obs", "Bundle", "entry", 3, "resource", "Observation", "status")) == (
        "prefetch.obs.entry[3].resource.status"
    )
    assert json_path(()) == "(body)"
