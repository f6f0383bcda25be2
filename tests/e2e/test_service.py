"""End to end over real HTTP: the CDS Hooks sandbox's request shapes and the issue's clinical scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import builders
from tests.support.fhir_server import FhirTestServer

pytestmark = pytest.mark.e2e
NO_IMAGING = ("info", "test-no-imaging-acute-uncomplicated")
SELF_MANAGEMENT = ("info", "adv-self-management-nonspecific")
STARTBACK = ("info", "test-startback-screening")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _discover(live: str) -> dict[str, Any]:
    return {s["hook"]: s for s in httpx.get(f"{live}/cds-services").json()["services"]}


def _call(live: str, body: dict[str, Any], service: str = "lumbar-patient-view") -> httpx.Response:
    return httpx.post(f"{live}/cds-services/{service}", json=body, timeout=10)


def _topics(response: httpx.Response) -> list[tuple[str, str]]:
    return [(c["indicator"], c["source"]["topic"]["code"]) for c in response.json()["cards"]]


def test_patient_view_with_prefetch(live: str) -> None:
    """The sandbox shape: prefetch filled from discovery's templates, fhirServer present but not needed."""
    keys = list(_discover(live)["patient-view"]["prefetch"])
    body = builders.hook_request(
        prefetch=builders.prefetch_for(builders.lbp_today(), keys),
        fhir_server="https://not-allowed.example/fhir",
    )
    response = _call(live, body)
    assert response.status_code == 200, response.text
    assert _topics(response) == [("critical", "rf-ces-sphincter-disturbance")]


def test_patient_view_with_only_a_fhir_server(live: str, fhir: FhirTestServer) -> None:
    fhir.resources = builders.lbp_today()
    response = _call(live, builders.hook_request(fhir_server=fhir.base_url))
    assert response.status_code == 200, response.text
    assert _topics(response) == [("critical", "rf-ces-sphincter-disturbance")]
    assert fhir.requests, "the service should have fetched from the FHIR server"


def test_patient_view_with_neither_is_412(live: str) -> None:
    response = _call(live, builders.hook_request())
    assert response.status_code == 412
    assert response.json()["resourceType"] == "OperationOutcome"


def test_sandbox_omits_keys_it_could_not_fill_and_the_service_fetches_them(
    live: str, fhir: FhirTestServer
) -> None:
    fhir.resources = builders.lbp_today()
    body = builders.sandbox_patient_view()
    body["fhirServer"] = fhir.base_url
    for key in [k for k in body["prefetch"] if k.startswith("observations")]:  # the search and its parts
        del body["prefetch"][key]
    response = _call(live, body)
    assert response.status_code == 200
    assert _topics(response) == [("critical", "rf-ces-sphincter-disturbance")]
    assert {r.path for r in fhir.requests} == {"/fhir/Observation"}


def test_a_server_without_medication_searches_still_gives_the_red_flag_cards(
    live: str, fhir: FhirTestServer
) -> None:
    """Many US Core servers have no MedicationStatement search: that data is "not available", not a failed
    call. The red-flag cards come; a card whose rules read medications says what it was decided without."""
    fhir.resources = builders.lbp_today() + builders.as_of_today(
        [
            builders.condition(
                "hiv", "86406008", "2020-01-10", display="Human immunodeficiency virus infection"
            )
        ]
    )
    fhir.faults.unsupported = {"MedicationStatement": 400, "MedicationRequest": 404}
    response = _call(live, builders.hook_request(fhir_server=fhir.base_url))
    assert response.status_code == 200, response.text
    cards = {c["source"]["topic"]["code"]: c for c in response.json()["cards"]}
    assert cards["rf-ces-sphincter-disturbance"]["indicator"] == "critical"
    assert "Not available from the EHR" not in cards["rf-ces-sphincter-disturbance"]["detail"]
    note = cards["rf-immunosuppression"]["detail"]
    assert "Not available from the EHR: MedicationRequest (GET MedicationRequest answered HTTP 404" in note
    assert (
        "MedicationStatement (GET MedicationStatement answered HTTP 400 (OperationOutcome: not-supported))"
        in note
    )
    metrics = httpx.get(f"{live}/metrics").text
    assert 'lumbar_prefetch_unavailable_total{type="MedicationStatement"}' in metrics


def test_one_representation_of_medications_is_enough(live: str, fhir: FhirTestServer) -> None:
    """MedicationRequest answers where MedicationStatement is not supported: nothing is missing."""
    fhir.resources = builders.lbp_today() + builders.as_of_today(
        [
            builders.condition(
                "hiv", "86406008", "2020-01-10", display="Human immunodeficiency virus infection"
            )
        ]
    )
    fhir.faults.unsupported = {"MedicationStatement": 400}
    response = _call(live, builders.hook_request(fhir_server=fhir.base_url))
    assert response.status_code == 200, response.text
    assert all("Not available from the EHR" not in c["detail"] for c in response.json()["cards"])


def test_without_medications_plain_back_pain_is_not_reassured(live: str, fhir: FhirTestServer) -> None:
    """The red-flag rules read medications (steroids, immunosuppressants): without them the no-imaging advice
    cannot be given, and the card says why."""
    fhir.resources = builders.as_of_today(
        [builders.patient(), builders.condition("lbp", "279039007", "2026-11-15", display="Low back pain")]
    )
    fhir.faults.unsupported = {"MedicationStatement": 400, "MedicationRequest": 400}
    response = _call(live, builders.hook_request(fhir_server=fhir.base_url))
    assert response.status_code == 200, response.text
    cards = {c["source"]["topic"]["code"]: c for c in response.json()["cards"]}
    advice = cards["test-no-imaging-acute-uncomplicated"]
    assert "could not be decided" in advice["summary"], advice["summary"]
    assert "MedicationStatement not available" in advice["detail"]


def test_412_names_every_missing_key(live: str) -> None:
    """Nothing about the patient can be read: 412, one issue per key, each with its reason."""
    keys = set(_discover(live)["patient-view"]["prefetch"])
    response = _call(live, builders.hook_request())
    assert response.status_code == 412
    issues = response.json()["issue"]
    assert {issue["expression"][0] for issue in issues} == {f"prefetch.{key}" for key in keys}
    assert all("no fhirServer" in issue["diagnostics"] for issue in issues)


def test_without_the_patient_and_the_problems_the_call_is_412(live: str, fhir: FhirTestServer) -> None:
    fhir.resources = builders.lbp_today()
    fhir.faults.unsupported = {"Patient": 404, "Condition": 400}
    response = _call(live, builders.hook_request(fhir_server=fhir.base_url))
    assert response.status_code == 412
    missing = {issue["expression"][0] for issue in response.json()["issue"]}
    assert {"prefetch.patient", "prefetch.conditions"} <= missing
    assert not any("Observation" in issue["diagnostics"] for issue in response.json()["issue"])


def test_a_slow_fhir_server_gives_412_within_the_budget(live: str, fhir: FhirTestServer) -> None:
    fhir.faults.delay_s = 5
    response = _call(live, builders.hook_request(fhir_server=fhir.base_url))
    assert response.status_code == 412
    assert response.elapsed.total_seconds() < 4


def test_a_failing_fhir_server_gives_412(live: str, fhir: FhirTestServer) -> None:
    fhir.faults.status = 500
    response = _call(live, builders.hook_request(fhir_server=fhir.base_url))
    assert response.status_code == 412
    assert "HTTP 500" in response.json()["issue"][0]["diagnostics"]


def test_paginated_results_are_followed(live: str, fhir: FhirTestServer) -> None:
    fhir.resources = builders.lbp_today() + builders.as_of_today(
        [builders.finding(f"extra-{i}", "279039007", "2026-11-19") for i in range(9)]
    )
    fhir.page_size = 2
    response = _call(live, builders.hook_request(fhir_server=fhir.base_url))
    assert _topics(response) == [("critical", "rf-ces-sphincter-disturbance")]
    # Distinct pages, not a request count: a request cancelled by the previous test may still be logged late.
    pages = {r.query.get("_page", ["0"])[0] for r in fhir.requests if r.path.endswith("/Observation")}
    assert pages == {"0", "1", "2", "3", "4"}


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (builders.lbp_today(), [("critical", "rf-ces-sphincter-disturbance")]),
        (
            builders.lbp_today(retention_status="entered-in-error"),
            [NO_IMAGING, SELF_MANAGEMENT, STARTBACK],
        ),
        (
            builders.lbp_today(retention_when="2020-11-20T08:30:00Z"),
            [NO_IMAGING, SELF_MANAGEMENT, STARTBACK],
        ),
    ],
    ids=["new retention", "retention entered in error", "retention 6 years ago"],
)
def test_the_issue_scenario(
    live: str, resources: list[dict[str, Any]], expected: list[tuple[str, str]]
) -> None:
    keys = list(_discover(live)["patient-view"]["prefetch"])
    # The service's clock is real, so the scenario is dated relative to today:
    # pain for 6 days, retention since yesterday.
    response = _call(live, builders.hook_request(prefetch=builders.prefetch_for(_relative(resources), keys)))
    assert response.status_code == 200
    assert sorted(_topics(response)) == sorted(expected)
    if expected[0][0] == "critical":
        card = response.json()["cards"][0]
        orders = {
            (
                s["actions"][0]["resource"]["code"]["coding"][0]["code"],
                s["actions"][0]["resource"]["priority"],
            )
            for s in card["suggestions"]
        }
        assert {("306254002", "stat"), ("30679-5", "stat"), ("308482002", "stat")} <= orders
        assert not any(o[0] in {"24970-6", "30620-9"} for o in orders)
    else:
        for card in response.json()["cards"]:
            for suggestion in card.get("suggestions", []):
                code = suggestion["actions"][0]["resource"]["code"]["coding"][0]["code"]
                assert code not in {"30679-5", "24967-2", "24970-6", "30620-9"}


def _relative(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC)
    shifted = json.loads(json.dumps(resources))
    for resource in shifted:
        if resource["resourceType"] == "Condition":
            resource["onsetDateTime"] = resource["recordedDate"] = (
                (today - timedelta(days=6)).date().isoformat()
            )
        if resource["resourceType"] == "Observation" and not resource["effectiveDateTime"].startswith("2020"):
            resource["effectiveDateTime"] = (today - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif resource["resourceType"] == "Observation":
            resource["effectiveDateTime"] = (today - timedelta(days=6 * 365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return shifted


def test_feedback_over_http(live: str) -> None:
    item = {
        "card": "a76fdeb3-a30c-5886-bdb3-c5b2b3562fa2",
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "88828a43-8540-5946-8370-bcc1624ace56"}],
        "outcomeTimestamp": "2026-11-21T10:00:00.000Z",
    }
    ok = httpx.post(f"{live}/cds-services/lumbar-patient-view/feedback", json={"feedback": [item]})
    bad = httpx.post(f"{live}/cds-services/lumbar-patient-view/feedback", json={"feedback": [{"card": 1}]})
    assert ok.status_code == 200
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_logs_are_json_with_the_hook_instance(live: str, service_log: Path) -> None:
    keys = list(_discover(live)["patient-view"]["prefetch"])
    body = builders.hook_request(prefetch=builders.prefetch_for(builders.lbp_today(), keys))
    _call(live, body)
    lines = [json.loads(line) for line in service_log.read_text().splitlines() if line.startswith("{")]
    calls = [
        line
        for line in lines
        if line.get("event") == "hook call" and line.get("hookInstance") == body["hookInstance"]
    ]
    assert calls and calls[0]["service"] == "lumbar-patient-view"
