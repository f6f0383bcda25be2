"""The FHIR client against a real local FHIR server: fetching, paging, allow-list, tokens, and failures."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest

from cds_hooks.fhir import FhirAllowlist, FhirClient
from cds_hooks.request import parse_hook_request
from cds_hooks.resources import Bundle, Observation, Patient
from tests.support import builders
from tests.support.fhir_server import FhirTestServer

pytestmark = pytest.mark.anyio

TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&code=http://snomed.info/sct|267064002",
}


def _request(server: str | None, prefetch: dict[str, Any] | None = None, token: str | None = None) -> Any:
    body = builders.hook_request(fhir_server=server, prefetch=prefetch)
    if token:
        body["fhirAuthorization"] = builders.fhir_authorization(token)
    return parse_hook_request(json.dumps(body))


def _assert_unavailable(missing: dict[str, str], pattern: str) -> None:
    """Some key could not be filled, each for a reason matching ``pattern``."""
    assert missing
    assert all(re.search(pattern, why) for why in missing.values()), missing


def _client(
    http: httpx.AsyncClient, allow: list[str], timeout: float = 3.0, max_pages: int = 20
) -> FhirClient:
    return FhirClient(http, FhirAllowlist(allow), timeout_s=timeout, max_pages=max_pages)


async def test_fetches_missing_keys_in_parallel_with_the_bearer_token(fhir_server: FhirTestServer) -> None:
    fhir_server.resources = builders.lbp_patient_with_retention()
    async with httpx.AsyncClient() as http:
        prefetch, missing = await _client(http, [fhir_server.base_url]).fill_prefetch(
            _request(fhir_server.base_url, token="tok-123"), TEMPLATES
        )
        assert not missing
    assert isinstance(prefetch["patient"], Patient)
    observations = prefetch["observations"]
    assert isinstance(observations, Bundle)
    assert [type(e.resource) for e in observations.entry] == [Observation]
    assert {r.headers.get("Authorization") for r in fhir_server.requests} == {"Bearer tok-123"}
    search = next(r for r in fhir_server.requests if r.path.endswith("/Observation"))
    assert search.query["patient"] == ["pat-45"]


async def test_no_token_means_no_authorization_header(fhir_server: FhirTestServer) -> None:
    fhir_server.resources = builders.lbp_patient_with_retention()
    async with httpx.AsyncClient() as http:
        _, missing = await _client(http, [fhir_server.base_url]).fill_prefetch(
            _request(fhir_server.base_url), TEMPLATES
        )
    assert not missing
    assert all("Authorization" not in r.headers for r in fhir_server.requests)


async def test_a_complete_prefetch_needs_no_server_and_is_returned_as_is() -> None:
    prefetch = {"patient": builders.patient(), "observations": builders.bundle()}
    request = _request(None, prefetch)
    async with httpx.AsyncClient() as http:
        result, missing = await _client(http, []).fill_prefetch(request, TEMPLATES)
        assert not missing
    assert result is request.prefetch


async def test_null_means_no_data_and_is_not_fetched() -> None:
    request = _request(None, {"patient": None, "observations": None})
    async with httpx.AsyncClient() as http:
        result, missing = await _client(http, []).fill_prefetch(request, TEMPLATES)
        assert not missing
    assert result == {"patient": None, "observations": None}


async def test_operation_outcome_in_prefetch_is_treated_as_missing(fhir_server: FhirTestServer) -> None:
    fhir_server.resources = builders.lbp_patient_with_retention()
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    request = _request(fhir_server.base_url, {"patient": builders.patient(), "observations": outcome})
    async with httpx.AsyncClient() as http:
        result, missing = await _client(http, [fhir_server.base_url]).fill_prefetch(request, TEMPLATES)
        assert not missing
    assert isinstance(result["observations"], Bundle)
    assert [r.path for r in fhir_server.requests] == ["/fhir/Observation"]


async def test_missing_key_without_a_server_is_unavailable() -> None:
    async with httpx.AsyncClient() as http:
        _, missing = await _client(http, ["*"]).fill_prefetch(_request(None, {"patient": None}), TEMPLATES)
        _assert_unavailable(missing, "no fhirServer")


async def test_a_server_off_the_allowlist_is_never_contacted(fhir_server: FhirTestServer) -> None:
    fhir_server.resources = builders.lbp_patient_with_retention()
    async with httpx.AsyncClient() as http:
        _, missing = await _client(http, ["http://127.0.0.1:1/fhir"]).fill_prefetch(
            _request(fhir_server.base_url), TEMPLATES
        )
        _assert_unavailable(missing, "not in LUMBAR_FHIR_ALLOWLIST")
        _, missing = await _client(http, []).fill_prefetch(_request(fhir_server.base_url), TEMPLATES)
        _assert_unavailable(missing, "not in LUMBAR_FHIR_ALLOWLIST")
    assert fhir_server.requests == []


def test_allowlist_matches_on_segment_boundaries() -> None:
    allow = FhirAllowlist(["https://ehr.example.org/fhir/"])
    assert allow.permits("https://ehr.example.org/fhir")
    assert allow.permits("https://EHR.example.org/fhir/r4")
    assert not allow.permits("https://ehr.example.org/fhir-evil")
    assert not allow.permits("http://ehr.example.org/fhir")
    assert not allow.permits("https://ehr.example.org:8443/fhir")
    assert not allow.permits("https://ehr.example.org.evil.net/fhir")
    assert FhirAllowlist(["*"]).permits("http://anything/at/all")
    assert not FhirAllowlist([]).permits("https://ehr.example.org/fhir")


async def test_pages_are_followed_and_merged(fhir_server: FhirTestServer) -> None:
    observations = [builders.finding(f"o{i}", "267064002", "2026-11-20") for i in range(7)]
    fhir_server.resources = [builders.patient(), *observations]
    fhir_server.page_size = 3
    async with httpx.AsyncClient() as http:
        result, missing = await _client(http, [fhir_server.base_url]).fill_prefetch(
            _request(fhir_server.base_url, {"patient": builders.patient()}), TEMPLATES
        )
        assert not missing
    bundle = result["observations"]
    assert isinstance(bundle, Bundle)
    assert len(bundle.entry) == 7
    assert bundle.next_url() is None
    assert len([r for r in fhir_server.requests if r.path.endswith("Observation")]) == 3


async def test_a_paginated_prefetch_bundle_is_completed_from_the_server(fhir_server: FhirTestServer) -> None:
    fhir_server.resources = [
        builders.patient(),
        *(builders.finding(f"o{i}", "267064002", "2026-11-20") for i in range(4)),
    ]
    fhir_server.page_size = 2
    first_page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in fhir_server.resources[1:3]],
        "link": [{"relation": "next", "url": f"{fhir_server.base_url}/Observation?patient=pat-45&_page=1"}],
    }
    request = _request(fhir_server.base_url, {"patient": builders.patient(), "observations": first_page})
    async with httpx.AsyncClient() as http:
        result, missing = await _client(http, [fhir_server.base_url]).fill_prefetch(request, TEMPLATES)
        assert not missing
    bundle = result["observations"]
    assert isinstance(bundle, Bundle)
    assert len(bundle.entry) == 4


async def test_page_count_is_bounded(fhir_server: FhirTestServer) -> None:
    fhir_server.resources = [
        builders.patient(),
        *(builders.finding(f"o{i}", "267064002", "2026-11-20") for i in range(10)),
    ]
    fhir_server.page_size = 1
    async with httpx.AsyncClient() as http:
        _, missing = await _client(http, [fhir_server.base_url], max_pages=3).fill_prefetch(
            _request(fhir_server.base_url, {"patient": builders.patient()}), TEMPLATES
        )
        _assert_unavailable(missing, "more than 3 pages")
    assert len(fhir_server.requests) == 3


async def test_a_next_link_leaving_the_server_is_refused(fhir_server: FhirTestServer) -> None:
    fhir_server.resources = [
        builders.patient(),
        *(builders.finding(f"o{i}", "267064002", "2026-11-20") for i in range(4)),
    ]
    fhir_server.page_size = 2
    fhir_server.faults.next_link_base = "http://127.0.0.2:9/fhir"
    async with httpx.AsyncClient() as http:
        _, missing = await _client(http, ["*"]).fill_prefetch(
            _request(fhir_server.base_url, {"patient": builders.patient()}), TEMPLATES
        )
        _assert_unavailable(missing, "leaves the FHIR server")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"status": 404}, "HTTP 404"),
        ({"redirect_to": "http://127.0.0.1:9/elsewhere"}, "HTTP 302"),
        ({"operation_outcome": True}, "OperationOutcome"),
        ({"garbage": True}, "not return valid FHIR JSON"),
        ({"huge_bytes": 2_000_000}, "more than 1000000 bytes"),
    ],
)
async def test_server_failures_are_unavailable(
    fhir_server: FhirTestServer, fault: dict[str, Any], message: str
) -> None:
    for key, value in fault.items():
        setattr(fhir_server.faults, key, value)
    async with httpx.AsyncClient() as http:
        client = FhirClient(
            http, FhirAllowlist([fhir_server.base_url]), timeout_s=3, max_response_bytes=1_000_000
        )
        _, missing = await client.fill_prefetch(_request(fhir_server.base_url), TEMPLATES)
        _assert_unavailable(missing, message)


async def test_slow_server_hits_the_time_budget(fhir_server: FhirTestServer) -> None:
    fhir_server.faults.delay_s = 2.0
    started = time.perf_counter()
    async with httpx.AsyncClient() as http:
        _, missing = await _client(http, [fhir_server.base_url], timeout=0.3).fill_prefetch(
            _request(fhir_server.base_url), TEMPLATES
        )
        _assert_unavailable(missing, r"within 0\.3 s")
    assert time.perf_counter() - started < 1.5


async def test_unreachable_server_is_unavailable() -> None:
    async with httpx.AsyncClient() as http:
        _, missing = await _client(http, ["*"]).fill_prefetch(_request("http://127.0.0.1:9/fhir"), TEMPLATES)
        _assert_unavailable(missing, "failed: ConnectError")


async def test_one_unsupported_type_leaves_the_others(fhir_server: FhirTestServer) -> None:
    """A server without one search (many US Core servers have no MedicationStatement) makes that key
    unavailable, with the server's reason; the rest is fetched."""
    fhir_server.resources = builders.lbp_patient_with_retention()
    fhir_server.faults.unsupported = {"Observation": 400}
    async with httpx.AsyncClient() as http:
        prefetch, missing = await _client(http, [fhir_server.base_url]).fill_prefetch(
            _request(fhir_server.base_url), TEMPLATES
        )
    assert isinstance(prefetch["patient"], Patient)
    assert "observations" not in prefetch
    assert list(missing) == ["observations"]
    assert "not-supported" in missing["observations"]
