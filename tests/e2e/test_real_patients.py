"""Real public patients (tests/fixtures/real-patients) through the real HTTP service on every hook: no 5xx,
a valid CDS Hooks answer, and the red flags that do not depend on the date (a history of cancer) found the
same way as in process. Half of each patient's calls come with prefetch, the patient-view call fetches
everything from a real local FHIR server instead.

The clinical expectations at each record's own date are in tests/rules/test_real_patients.py (the service
evaluates at the real clock, which these old records predate).
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from tests.rules.test_real_patients import EXPECTED, load, patient_of, patients
from tests.support import builders
from tests.support.fhir_server import FhirTestServer

SERVICES = {
    "patient-view": "lumbar-patient-view",
    "encounter-start": "lumbar-encounter-start",
    "order-select": "lumbar-order-select",
    "order-sign": "lumbar-order-sign",
}


def _draft(pid: str, status: str = "draft") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest", "id": "mri-1", "status": status, "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "30679-5"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.50"}]}],
    }  # fmt: skip


def _body(bundle: dict[str, Any], hook: str, keys: list[str], fhir: str | None) -> dict[str, Any]:
    resources = [copy.deepcopy(e["resource"]) for e in bundle["entry"]]
    pid = patient_of(bundle)["id"]
    context: dict[str, Any] = {}
    if hook == "encounter-start":
        context["encounterId"] = "enc-1"
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = builders.bundle(_draft(pid))
        if hook == "order-select":
            context["selections"] = ["ServiceRequest/mri-1"]
    prefetch = None if fhir else builders.prefetch_for(resources, keys)
    return builders.hook_request(hook, pid=pid, prefetch=prefetch, fhir_server=fhir, **context)


@pytest.mark.e2e
@pytest.mark.parametrize("path", patients(), ids=lambda p: p.name.split(".")[0])
def test_a_real_patient_on_every_hook(live: str, fhir: FhirTestServer, path: Any) -> None:
    bundle = load(path)
    discovery = {s["hook"]: s for s in httpx.get(f"{live}/cds-services", timeout=10).json()["services"]}
    fhir.resources = [e["resource"] for e in bundle["entry"]]
    for hook, service in SERVICES.items():
        keys = list(discovery[hook]["prefetch"])
        body = _body(bundle, hook, keys, fhir.base_url if hook == "patient-view" else None)
        response = httpx.post(f"{live}/cds-services/{service}", json=body, timeout=30)
        assert response.status_code == 200, (hook, response.text[:500])
        cards = response.json()["cards"]
        assert all(c["indicator"] in ("info", "warning", "critical") and c["source"]["label"] for c in cards)
        topics = {c["source"]["topic"]["code"] for c in cards if "topic" in c["source"]}
        expected = EXPECTED[path.name.split(".")[0]]["order-select"]
        if hook in ("order-select", "order-sign") and "rf-cancer-history" in expected:
            assert "rf-cancer-history" in topics, (hook, topics)
