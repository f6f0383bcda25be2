"""The CDS Hooks sandbox (github cds-hooks/sandbox), replayed without a browser.

Every request below has the shape the sandbox really sends, as read in its source (commit 3b7e255, paths
under ``src/``) and seen on the wire from a local build in headless Chromium (docs/sandbox.md):

- start-up (``retrieve-data-helpers/fhir-metadata-retrieval.js``, ``patient-retrieval.js``):
  ``GET {fhir}/metadata``, ``GET {fhir}/Patient`` (the "is it secured" probe), ``GET {fhir}/Patient/{id}``
  (``Accept: application/json+fhir``), ``GET {fhir}/Condition?patient={id}``;
- discovery and hook calls (``discovery-services-retrieval.js``, ``service-exchange.js``): a CORS preflight,
  then the call with ``Authorization: Bearer`` an ES384 JWT (header ``alg``, ``typ``, ``kid``, ``jku``;
  claims ``iss``, ``aud`` = the exact URL called, ``exp`` = ``iat`` + 300, ``iat``, ``jti``; no ``sub``);
  the body has ``hookInstance``, ``hook``, ``fhirServer``, ``context`` with ``userId``
  ``Practitioner/COREPRACTITIONER1``, no ``fhirAuthorization`` for an open FHIR server, never an
  ``encounterId``, and ``prefetch`` only when some key was filled;
- prefetch: ``{{context.patientId}}`` (and other simple context values) substituted, a template with a
  token left unfilled is skipped; a search goes first as ``POST {fhir}/{type}/_search`` with a form body
  whose parameters are sorted by name, then as a GET only if the POST failed; a key whose requests fail is
  left out;
- the PAMA screen (``components/Pama/pama.jsx``): ``order-select`` with ``selections``
  ``["ServiceRequest/example-request-id"]`` and ``draftOrders`` a Bundle with no ``type`` holding one draft
  ServiceRequest (``intent: plan``, a CPT coding, SNOMED reasons); its first call, before a study is
  chosen, has ``code.coding: [{}]`` and no reasons. The rating is read from
  ``response.extension.systemActions``;
- feedback (``components/CardList/card-list.jsx``): ``POST {service}/feedback`` with a JWT;
  ``acceptedSuggestions`` ``[{id}]``, or an override whose reason has only ``code`` and ``system``.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx

from tests.support import builders
from tests.support.jwt_tools import token

ISSUER = "https://sandbox.cds-hooks.org"
JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
ORIGIN = "http://127.0.0.1:8080"  # where a local build of the sandbox is served
USER = "Practitioner/COREPRACTITIONER1"
CPT = "http://www.ama-assn.org/go/cpt"
SNOMED = "http://snomed.info/sct"
RATING_EXTENSION = "http://fhir.org/argonaut/Extension/pama-rating"
MRI_LUMBAR = {
    "code": "72148",
    "display": (
        "Magnetic resonance (eg, proton) imaging, spinal canal and contents, lumbar; "
        "without contrast material"
    ),
    "system": CPT,
}
LOW_BACK_PAIN = {"code": "279039007", "display": "Low back pain (finding)", "system": SNOMED}
_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")


@dataclass
class Sandbox:
    """One browser session of the sandbox: a FHIR server, a patient, and the key it signs with."""

    http: httpx.Client
    fhir: str
    patient_id: str
    key: Any

    # ---- start-up ----------------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """What the sandbox asks the FHIR server before anything else; returns the Patient."""
        metadata = self.http.get(f"{self.fhir}/metadata", headers=self._browser("application/json"))
        assert metadata.status_code == 200 and metadata.json()["resourceType"] == "CapabilityStatement"
        probe = self.http.get(f"{self.fhir}/Patient", headers=self._browser("application/json"))
        assert probe.status_code != 401
        patient = self.http.get(
            f"{self.fhir}/Patient/{self.patient_id}", headers=self._browser("application/json+fhir")
        )
        assert patient.status_code == 200, patient.text
        body = patient.json()
        assert body["resourceType"] == "Patient"
        assert isinstance(body["name"][0]["given"], list)  # the sandbox's patient reducer needs a list
        conditions = self.http.get(
            f"{self.fhir}/Condition",
            params={"patient": self.patient_id},
            headers=self._browser("application/json+fhir"),
        )
        assert conditions.status_code == 200
        for entry in conditions.json().get("entry", []):  # its Rx View reads code.coding[0].code
            assert entry["resource"]["code"]["coding"][0]["code"]
        return dict(body)

    # ---- CDS service calls -------------------------------------------------------------------------

    def discover(self, discovery_url: str) -> list[dict[str, Any]]:
        self.preflight(discovery_url, "GET", "authorization")
        answer = self.http.get(discovery_url, headers=self._signed(discovery_url))
        assert answer.status_code == 200, answer.text
        services: list[dict[str, Any]] = answer.json()["services"]
        assert services
        return services

    def call(
        self, service_url: str, hook: str, context: dict[str, Any], prefetch: dict[str, Any]
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "hookInstance": str(uuid.uuid4()),
            "hook": hook,
            "fhirServer": self.fhir,
            "context": {"patientId": self.patient_id, "userId": USER, **context},
        }
        if prefetch:
            body["prefetch"] = prefetch
        self.preflight(service_url, "POST", "authorization,content-type")
        return self.http.post(service_url, json=body, headers=self._signed(service_url, json=True))

    def feedback(self, service_url: str, item: dict[str, Any]) -> httpx.Response:
        url = f"{service_url}/feedback"
        self.preflight(url, "POST", "authorization,content-type")
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return self.http.post(
            url,
            json={"feedback": [{**item, "outcomeTimestamp": stamp}]},
            headers=self._signed(url, json=True) | {"Accept": "application/json, text/plain, */*"},
        )

    def preflight(self, url: str, method: str, headers: str) -> None:
        """The browser's CORS preflight; the real call is only sent if it allows the origin and headers."""
        answer = self.http.options(url, headers=builders.preflight(method, headers, ORIGIN))
        assert answer.status_code in (200, 204), (url, answer.status_code, answer.text)
        assert answer.headers.get("access-control-allow-origin") in ("*", ORIGIN)
        allowed = answer.headers.get("access-control-allow-headers", "").lower()
        for name in headers.split(","):
            assert name in allowed or allowed == "*", (name, allowed)

    # ---- prefetch ----------------------------------------------------------------------------------

    def prefetch(self, templates: dict[str, str], context: dict[str, Any]) -> dict[str, Any]:
        """Fill the service's prefetch templates as the sandbox does; unfillable or failed keys are left
        out."""
        values = {"patientId": self.patient_id, "userId": USER, **context}
        out: dict[str, Any] = {}
        for key, template in templates.items():
            filled = _TOKEN.sub(
                lambda m: (
                    str(values[m.group(1)])
                    if isinstance(values.get(m.group(1)), str | int | float | bool)
                    else m.group(0)
                ),
                template,
            )
            if "{{" in filled:
                continue  # the sandbox skips such a key (a console warning only)
            result = self._fetch(filled)
            if result is not None:
                out[key] = result
        return out

    def _fetch(self, query: str) -> dict[str, Any] | None:
        path, _, raw = query.partition("?")
        if not raw:
            answer = self.http.get(f"{self.fhir}/{path}", headers=self._browser("application/json+fhir"))
            return dict(answer.json()) if answer.status_code == 200 else None
        params = sorted(httpx.QueryParams(raw).multi_items())  # query-string re-sorts by name
        posted = self.http.post(
            f"{self.fhir}/{path}/_search",
            content=urlencode(params),
            headers=self._browser("application/json+fhir")
            | {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if posted.status_code == 200 and posted.content:
            return dict(posted.json())
        if posted.status_code == 200:
            return None  # an empty 2xx body: no GET, key left out
        answer = self.http.get(
            f"{self.fhir}/{path}", params=params, headers=self._browser("application/json+fhir")
        )
        return dict(answer.json()) if answer.status_code == 200 else None

    # ---- headers -----------------------------------------------------------------------------------

    def _browser(self, accept: str) -> dict[str, str]:
        return {"Accept": accept, "Origin": ORIGIN}

    def _signed(self, audience: str, *, json: bool = False) -> dict[str, str]:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": audience, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
        headers = self._browser("application/json") | {
            "Authorization": f"Bearer {token(self.key, claims, jku=JKU)}"
        }
        if json:
            headers["Content-Type"] = "application/json"
        return headers


def pama_context(
    patient_id: str, study: dict[str, str] | None, reasons: list[dict[str, str]]
) -> dict[str, Any]:
    """The PAMA screen's order-select context; ``study`` None is its first call, before a study is chosen."""
    code: dict[str, Any] = {"coding": [study or {}]}
    if study:
        code["text"] = study["display"]
    return {
        "selections": ["ServiceRequest/example-request-id"],
        "draftOrders": {
            "resourceType": "Bundle",
            "entry": [
                {
                    "resource": {
                        "resourceType": "ServiceRequest",
                        "id": "example-request-id",
                        "status": "draft",
                        "intent": "plan",
                        "code": code,
                        "subject": {"reference": f"Patient/{patient_id}"},
                        "reasonCode": [{"coding": [r], "text": r["display"]} for r in reasons],
                    }
                }
            ],
        },
    }


def pama_rating(response: dict[str, Any]) -> str | None:
    """The rating the sandbox shows: the first ``update`` system action's pama-rating code, read from
    ``extension.systemActions`` (the sandbox ignores the top-level ``systemActions``)."""
    for action in response.get("extension", {}).get("systemActions", []):
        if action.get("type") != "update":
            continue
        for extension in action.get("resource", {}).get("extension", []):
            if extension.get("url") == RATING_EXTENSION:
                return str(extension["valueCodeableConcept"]["coding"][0]["code"])
    return None
