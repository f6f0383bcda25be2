"""The HTTP API in-process: discovery, hook calls, every 4xx as an OperationOutcome, feedback, health."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, get_args

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from rules.engine.model.schema import PrefetchedType
from service.app import create_app
from tests.conftest import running
from tests.support import builders
from tests.support.fhir_server import FhirTestServer

pytestmark = pytest.mark.anyio
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SERVICE = "/cds-services/lumbar-patient-view"


def _outcome(response: Any, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert any(text in issue["diagnostics"] for issue in body["issue"]), body


async def test_discovery_lists_one_service_per_hook_with_generated_prefetch(settings_factory: Any) -> None:
    async with running(create_app(settings_factory())) as client:
        response = await client.get("/cds-services")
    assert response.status_code == 200
    services = {s["hook"]: s for s in response.json()["services"]}
    assert set(services) == {"patient-view", "encounter-start", "order-select", "order-sign"}
    patient_view = services["patient-view"]
    assert patient_view["id"] == "lumbar-patient-view"
    assert patient_view["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    searches = patient_view["prefetch"]
    observations = ",".join(v for k, v in searches.items() if k.startswith("observations"))
    assert "http://snomed.info/sct|267064002" in observations  # read by the cauda equina rule
    assert "http://snomed.info/sct|75367002" not in observations  # read by no rule
    assert "rule-set version" in patient_view["usageRequirements"]
    assert max(len(template) for template in searches.values()) <= 2000  # what FHIR servers accept
    assert "icd-10-cm" not in observations  # only the code systems an Observation is coded in


async def test_sandbox_patient_view_with_prefetch(settings_factory: Any) -> None:
    body = json.dumps(builders.sandbox_patient_view())
    async with running(create_app(settings_factory())) as client:
        response = await client.post(SERVICE, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    assert [c["indicator"] for c in cards] == ["critical"]
    assert "cauda equina" in cards[0]["summary"]


async def test_only_fhir_server_is_fetched_when_allowed(
    settings_factory: Any, fhir_server: FhirTestServer
) -> None:
    fhir_server.resources = builders.lbp_today()
    app = create_app(settings_factory(fhir_allowlist=[fhir_server.base_url]))
    request = builders.hook_request(fhir_server=fhir_server.base_url)
    async with running(app) as client:
        response = await client.post(SERVICE, json=request)
    assert response.status_code == 200, response.text
    assert response.json()["cards"][0]["indicator"] == "critical"
    assert {
        r.path.rsplit("/", 1)[-1] if "Patient/" not in r.path else "Patient" for r in fhir_server.requests
    } == set(get_args(PrefetchedType))  # every resource type the prefetch reads


async def test_neither_prefetch_nor_server_is_412(settings_factory: Any) -> None:
    async with running(create_app(settings_factory())) as client:
        response = await client.post(SERVICE, json=builders.hook_request())
    _outcome(response, 412, "no fhirServer")


async def test_a_server_not_on_the_allowlist_is_412_and_never_contacted(
    settings_factory: Any, fhir_server: FhirTestServer
) -> None:
    async with running(create_app(settings_factory())) as client:
        response = await client.post(SERVICE, json=builders.hook_request(fhir_server=fhir_server.base_url))
    _outcome(response, 412, "not in LUMBAR_FHIR_ALLOWLIST")
    assert fhir_server.requests == []


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"", 400, "invalid JSON"),
        (b"{not json", 400, "invalid JSON"),
        (b"[]", 400, "(body)"),
        (b'{"hook": "patient-view"}', 400, "hookInstance: Field required"),
        (
            json.dumps(builders.hook_request("order-sign")).encode(),
            400,
            "context.draftOrders: Field required",
        ),
        (json.dumps({**builders.hook_request(), "hookInstance": 5}).encode(), 400, "hookInstance"),
        (  # NaN is not JSON, even where no model reads it (the draft orders are re-read as sent)
            json.dumps(
                {"junk": float("nan"), **builders.hook_request("order-sign", draftOrders=builders.bundle())}
            ).encode(),
            400,
            "invalid JSON",
        ),
        *(  # a resourceType that is not a string, anywhere in prefetch (was a 500: unhashable)
            (
                json.dumps(
                    builders.hook_request(
                        prefetch={"conditions": builders.bundle({"resourceType": bad, "id": "x"})}
                    )
                ).encode(),
                400,
                "prefetch.conditions.entry[0].resource.resourceType",
            )
            for bad in ({}, [], 7)
        ),
    ],
)
async def test_malformed_requests_are_400_naming_the_field(
    settings_factory: Any, body: bytes, status: int, text: str
) -> None:
    async with running(create_app(settings_factory())) as client:
        response = await client.post(SERVICE, content=body, headers={"Content-Type": "application/json"})
    _outcome(response, status, text)


async def test_hook_must_match_the_service(settings_factory: Any) -> None:
    body = builders.hook_request("encounter-start", encounterId="e1", prefetch={})
    async with running(create_app(settings_factory())) as client:
        response = await client.post(SERVICE, json=body)
    _outcome(response, 400, "which serves 'patient-view'")


async def test_unknown_service_and_path_are_404(settings_factory: Any) -> None:
    async with running(create_app(settings_factory())) as client:
        _outcome(await client.post("/cds-services/nope", json={}), 404, "unknown CDS service 'nope'")
        _outcome(await client.post("/cds-services/nope/feedback", json={}), 404, "unknown CDS service")
        _outcome(await client.get("/nothing-here"), 404, "no such endpoint")
        _outcome(await client.delete("/cds-services"), 405, "method not allowed")


async def test_body_limit_is_413(settings_factory: Any) -> None:
    async with running(create_app(settings_factory(max_body_bytes=2048))) as client:
        response = await client.post(
            SERVICE, content=b"{" + b" " * 4096 + b"}", headers={"Content-Type": "application/json"}
        )
        _outcome(response, 413, "larger than 2048 bytes")

        async def chunks() -> Any:  # no Content-Length: the limit holds for streamed bodies too
            for _ in range(10):
                yield b" " * 1024

        response = await client.post(SERVICE, content=chunks(), headers={"Content-Type": "application/json"})
        _outcome(response, 413, "larger than 2048 bytes")


async def test_jwt_mode_refuses_every_cds_call_but_not_health(settings_factory: Any) -> None:
    async with running(create_app(settings_factory(auth="jwt"))) as client:
        _outcome(await client.get("/cds-services"), 401, "authentication failed")
        _outcome(
            await client.post(SERVICE, json=builders.hook_request(prefetch={})),
            401,
            "authentication failed",
        )
        response = await client.post(f"{SERVICE}/feedback", json={})
        _outcome(response, 401, "authentication failed")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert (await client.get("/healthz")).status_code == 200


async def test_cors_preflight_needs_no_token(settings_factory: Any) -> None:
    async with running(create_app(settings_factory(auth="jwt"))) as client:
        headers = builders.preflight("POST", "authorization,content-type")
        response = await client.options(SERVICE, headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


async def test_cors_restricted_origins(settings_factory: Any) -> None:
    app = create_app(settings_factory(cors_origins=["https://ehr.example.org"]))
    async with running(app) as client:
        allowed = await client.get("/cds-services", headers={"Origin": "https://ehr.example.org"})
        other = await client.get("/cds-services", headers={"Origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://ehr.example.org"
    assert "access-control-allow-origin" not in other.headers


async def test_feedback_is_stored_once(settings_factory: Any, database_url: str) -> None:
    item = {
        "card": "9b3c6a1e-0000-4000-8000-000000000001",
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "system": "urn:lumbar-cds:override-reason",
                "code": "already-managed",
                "display": "Already being managed or referred",
            },
            "userComment": "seen in ED yesterday",
        },
        "outcomeTimestamp": "2026-11-21T10:05:00Z",
    }
    accepted = {
        "card": "9b3c6a1e-0000-4000-8000-000000000002",
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "s-1"}],
        "outcomeTimestamp": "2026-11-21T10:06:00Z",
    }
    async with running(create_app(settings_factory(database_url=database_url))) as client:
        first = await client.post(f"{SERVICE}/feedback", json={"feedback": [item, accepted]})
        again = await client.post(f"{SERVICE}/feedback", json={"feedback": [item]})
        bad = await client.post(f"{SERVICE}/feedback", json={"feedback": [{**item, "outcome": "ignored"}]})
    assert (first.status_code, again.status_code) == (200, 200)
    _outcome(bad, 400, "feedback[0].outcome")
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.text(
                    "select card_uuid, outcome, override_code, user_comment, accepted_suggestions"
                    " from feedback order by id"
                )
            )
        ).all()
    await engine.dispose()
    assert rows == [
        (
            "9b3c6a1e-0000-4000-8000-000000000001",
            "overridden",
            "already-managed",
            "seen in ED yesterday",
            "[]",
        ),
        ("9b3c6a1e-0000-4000-8000-000000000002", "accepted", None, None, '["s-1"]'),
    ]


async def test_each_feedback_item_is_stored_or_refused_on_its_own(
    settings_factory: Any, database_url: str
) -> None:
    """One bad item (a NUL, an over-long code) once made its good neighbours fail too: now the good ones are
    stored, the bad ones named by index, and the answer says which is which."""

    def item(n: int, **changes: Any) -> dict[str, Any]:
        base = {
            "card": f"9b3c6a1e-0000-4000-8000-00000000010{n}",
            "outcome": "overridden",
            "overrideReason": {"reason": {"code": "already-managed", "display": "Already managed"}},
            "outcomeTimestamp": "2026-11-21T10:05:00Z",
        }
        return {**base, **changes}

    too_long = {"reason": {"code": "x" * 201}}
    with_nul = {"reason": {"code": "already-managed"}, "userComment": "seen\u0000today"}
    batch = [item(0), item(1, overrideReason=too_long), item(2), item(3, overrideReason=with_nul), item(4)]
    async with running(create_app(settings_factory(database_url=database_url))) as client:
        mixed = await client.post(f"{SERVICE}/feedback", json={"feedback": batch})
        all_bad = await client.post(f"{SERVICE}/feedback", json={"feedback": [batch[1]]})
        not_an_object = await client.post(f"{SERVICE}/feedback", json={"feedback": [batch[0], "not an item"]})
    assert mixed.status_code == 400
    issues = mixed.json()["issue"]
    assert [i["expression"][0] for i in issues if i["severity"] == "error"] == [
        "feedback[1].overrideReason.reason.code",
        "feedback[3].overrideReason.userComment",
    ]
    assert issues[-1]["severity"] == "information"
    assert issues[-1]["diagnostics"].startswith("3 of 5 items stored; refused: feedback[1], feedback[3]")
    _outcome(all_bad, 400, "feedback[0].overrideReason.reason.code")  # nothing to store: refused whole
    assert "feedback[1]: Input should be an object" in not_an_object.text  # refused on its own too
    assert "1 of 2 items stored" in not_an_object.text
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        rows = await connection.execute(sa.text("select card_uuid from feedback order by id"))
        cards = rows.scalars().all()
    await engine.dispose()
    assert [c[-1] for c in cards] == ["0", "2", "4"]  # batch[0] sent twice, stored once


async def test_health_readiness_and_metrics(settings_factory: Any) -> None:
    app = create_app(settings_factory())
    async with running(app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = (await client.get("/readyz")).json()
        await client.post(SERVICE, json=builders.sandbox_patient_view())
        metrics = (await client.get("/metrics")).text
    assert ready["status"] == "ready" and ready["database"] == "reachable"
    assert len(ready["rules"]["version"]) == 16
    assert (
        'lumbar_hook_calls_total{hook="patient-view",service="lumbar-patient-view",status="200"} 1.0'
        in metrics
    )
    assert 'lumbar_rules_fired_total{rule="rf-ces-sphincter-disturbance"} 1.0' in metrics


async def test_readiness_fails_without_a_database(settings_factory: Any, tmp_path: Path) -> None:
    app = create_app(settings_factory())
    async with running(app) as client:
        await app.state.lumbar.database.engine.dispose()
        app.state.lumbar.database.engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["database"] == "unreachable"


async def test_openapi_describes_the_raw_body_endpoints(settings_factory: Any) -> None:
    async with running(create_app(settings_factory())) as client:
        doc = (await client.get("/openapi.json")).json()
    call = doc["paths"]["/cds-services/{service_id}"]["post"]
    assert call["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HookRequest"
    }
    assert set(call["responses"]) >= {"200", "400", "401", "404", "412", "413"}
    schemas = doc["components"]["schemas"]
    assert "HookRequest" in schemas and "Feedback" in schemas
    for name, schema in schemas.items():
        assert schema.get("$ref") != f"#/components/schemas/{name}", f"{name} refers to itself"
    assert "properties" in schemas["Feedback"]


def test_invalid_catalogue_refuses_to_start(settings_factory: Any, tmp_path: Path) -> None:
    from rules.engine.model.diagnostics import RuleSetError

    (tmp_path / "rules").mkdir()
    with pytest.raises(RuleSetError):
        create_app(settings_factory(rules_dir=tmp_path / "rules"))


def test_every_middleware_is_pure_asgi(settings_factory: Any) -> None:
    """No BaseHTTPMiddleware (it halves throughput, spec/stack.md): each one is a plain ASGI callable."""
    from starlette.middleware.base import BaseHTTPMiddleware

    app = create_app(settings_factory())
    classes = [middleware.cls for middleware in app.user_middleware]
    assert len(classes) >= 3
    assert not [cls for cls in classes if isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware)]


async def test_the_api_docs_need_nothing_from_the_internet(settings_factory: Any) -> None:
    """/docs names no other host (FastAPI's default loads Swagger UI from a CDN), and every script, style
    and image it names is served by the service itself, with jwt auth on."""
    async with running(create_app(settings_factory(auth="jwt"))) as client:
        for url, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            page = await client.get(url)
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert not re.findall(r"(?:src|href)=\"https?://", page.text), f"{url} loads from another host"
            assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assert f"/docs/assets/{script}" in assets, assets
            for asset in assets:
                answer = await client.get(asset)
                assert answer.status_code == 200 and len(answer.content) > 100, asset
        assert (await client.get("/openapi.json")).status_code == 200  # what the pages load


async def test_the_openapi_declares_who_may_call_what(settings_factory: Any) -> None:
    async with running(create_app(settings_factory())) as client:
        document = (await client.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["clientJWT"] == {
        **schemes["clientJWT"],
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    security = {
        (m.upper(), p): op.get("security") for p, ops in document["paths"].items() for m, op in ops.items()
    }
    assert security[("POST", "/cds-services/{service_id}")] == [{"clientJWT": []}]
    assert security[("GET", "/admin/report")] == [{"adminToken": []}]
    assert security[("GET", "/healthz")] is None and security[("GET", "/readyz")] is None
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]
    assert "422" not in document["paths"]["/admin/report"]["get"]["responses"]  # a bad date is a 400


async def test_metrics_carry_the_process_figures(settings_factory: Any) -> None:
    async with running(create_app(settings_factory())) as client:
        text = (await client.get("/metrics")).text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert re.search(rf'^{name}{{pid="{os.getpid()}"}} [0-9.e+]+$', text, re.M), name


async def test_a_refusal_is_logged_with_its_reason_and_never_the_token(
    settings_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    body = builders.hook_request(fhir_server="https://ehr.example.org/fhir")
    body["fhirAuthorization"] = {"access_token": "tok-SECRET-123", "token_type": "Bearer", "scope": 5}
    async with running(create_app(settings_factory())) as client:
        capsys.readouterr()
        assert (await client.post(SERVICE, json=body)).status_code == 400
        assert (await client.post(SERVICE, content=b"{not json")).status_code == 400
    out = capsys.readouterr().out
    requests = [line for line in map(json.loads, out.splitlines()) if line.get("event") == "request"]
    assert [line["status"] for line in requests] == [400, 400]
    assert "fhirAuthorization.scope" in requests[0]["reason"], requests[0]
    assert requests[1]["reason"], requests[1]
    assert "tok-SECRET-123" not in out


async def test_a_patient_other_than_the_calls_is_a_data_quality_note(
    settings_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    resources = builders.lbp_today()
    other = {**resources[0], "id": "someone-else"}
    prefetch = builders.prefetch_for([other, *resources[1:]], list(builders.PATIENT_VIEW_KEYS))
    async with running(create_app(settings_factory())) as client:
        capsys.readouterr()
        assert (await client.post(SERVICE, json=builders.hook_request(prefetch=prefetch))).status_code == 200
    notes = [
        line["note"]
        for line in map(json.loads, capsys.readouterr().out.splitlines())
        if line.get("event") == "data quality"
    ]
    assert "Patient/someone-else: not the patient of this call; ignored" in notes, notes


async def test_two_thousand_matching_observations_are_answered_with_the_card(settings_factory: Any) -> None:
    """Was a 500 (the evidence overflowed the card's detail limit), so no cauda equina card at all."""
    resources = builders.lbp_today()
    resources += [{**resources[-1], "id": f"retention-{i}"} for i in range(2000)]
    async with running(create_app(settings_factory())) as client:
        response = await client.post(SERVICE, json=builders.patient_view_request(resources))
    assert response.status_code == 200, response.text[:300]
    card = response.json()["cards"][0]
    assert card["indicator"] == "critical" and "- and 1,998 more Retention of urine" in card["detail"]


async def test_readyz_names_the_rule_files_without_server_paths(settings_factory: Any) -> None:
    async with running(create_app(settings_factory())) as client:
        files = (await client.get("/readyz")).json()["rules"]["files"]
    assert "rf-ces-sphincter-disturbance.yaml" in files and "valuesets/sphincter-disturbance.yaml" in files
    assert not any(name.startswith("/") or ".." in name for name in files), list(files)[:3]


async def test_readyz_detail_needs_the_admin_token(settings_factory: Any) -> None:
    """The public /readyz says ready or not, the version and the reload's outcome; the rule files, a reload's
    errors and the audit backlog only with the admin token."""
    token = "a-long-admin-token-for-tests"
    app = create_app(settings_factory(auth="jwt", admin_token=token))
    state = app.state.lumbar
    async with running(app) as client:
        state.reload.ok, state.reload.errors = False, ["rf-x.yaml:3:5: unknown field 'whne'"]
        public = (await client.get("/readyz")).json()
        wrong = (await client.get("/readyz", headers={"Authorization": "Bearer not-the-token"})).json()
        detail = (await client.get("/readyz", headers={"Authorization": f"Bearer {token}"})).json()
    assert public == wrong
    assert set(public["rules"]) == {"version", "count", "reload"}
    assert public["rules"]["reload"]["status"] == "error"
    assert public["rules"]["reload"]["errors"] == "detail with the admin token"
    assert "rf-x.yaml" not in str(public) and "audit" not in public
    assert detail["rules"]["reload"]["errors"] == ["rf-x.yaml:3:5: unknown field 'whne'"]
    assert "rf-ces-sphincter-disturbance.yaml" in detail["rules"]["files"]
    assert detail["audit"]["pending"] >= 0 and detail["audit"]["spill"]["files"] == 0


async def test_an_unauthenticated_body_is_not_read(settings_factory: Any) -> None:
    """A caller without a valid token cannot make the worker buffer its body: 401 before reading it."""
    sent: list[int] = []

    async def body() -> Any:
        for _ in range(60):  # 60 x 64 KB, announced by no Content-Length
            sent.append(1)
            yield b" " * 65_536

    async with running(create_app(settings_factory(auth="jwt"))) as client:
        response = await client.post(SERVICE, content=body(), headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert len(sent) <= 2, f"{len(sent)} chunks of the body were read before authentication"
