"""schemathesis against the live service's /openapi.json: no generated request may produce a 5xx.

The requests are generated from the same schema an integrator sees, for every operation, and sent over
real HTTP. (schemathesis's lazy pytest fixture does not work with pytest 9, so its hypothesis strategies
are driven directly.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.openapi import from_url

pytestmark = pytest.mark.e2e


def test_no_generated_request_gets_a_server_error(live: str, service_log: Path) -> None:
    schema = from_url(f"{live}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    seen: dict[str, set[int]] = {}
    for operation, mode in [
        (op, mode) for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]:

        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # no shrinking over the network: report the first failing request as is
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: object) -> None:
            response = case.call(timeout=10)  # type: ignore[attr-defined]
            label = f"{case.method} {case.path}"  # type: ignore[attr-defined]
            seen.setdefault(label, set()).add(response.status_code)
            if response.status_code >= 500:
                tail = service_log.read_text()[-3000:]
                body = repr(case.body)[:500]  # type: ignore[attr-defined]
                answer = f"{label} -> {response.status_code} {response.text[:300]}"
                pytest.fail(f"{answer}\nbody: {body}\nlog: {tail}")
            if response.status_code >= 400:
                assert response.json()["resourceType"] == "OperationOutcome", response.text[:300]

        try:
            run()
        except Unsatisfiable:  # an operation with no inputs has no invalid variant to generate
            assert mode is GenerationMode.NEGATIVE
    # The generated calls reached the hook endpoint's validation, not just routing.
    assert {400, 412} <= seen["POST /cds-services/{service_id}"], seen
    assert {200, 400} <= seen["POST /cds-services/{service_id}/feedback"], seen
    assert undeclared(httpx.get(f"{live}/openapi.json").json(), seen) == {}


def undeclared(document: dict[str, Any], seen: dict[str, set[int]]) -> dict[str, set[int]]:
    """The statuses each operation answered that its OpenAPI responses do not declare."""
    out: dict[str, set[int]] = {}
    for label, statuses in seen.items():
        method, path = label.split(" ", 1)
        declared = {int(code) for code in document["paths"][path][method.lower()]["responses"]}
        if statuses - declared:
            out[label] = statuses - declared
    return out


def test_an_undeclared_status_would_be_caught() -> None:
    document = {"paths": {"/readyz": {"get": {"responses": {"200": {}, "503": {}}}}}}
    assert undeclared(document, {"GET /readyz": {200, 503}}) == {}
    assert undeclared(document, {"GET /readyz": {200, 422}}) == {"GET /readyz": {422}}
