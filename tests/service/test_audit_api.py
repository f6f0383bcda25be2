"""The audit trail and the report through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import select

from service.app import create_app
from service.audit import AuditRecord
from service.cli import main
from service.storage.database import Database
from service.storage.tables import audit_call, audit_card, audit_rule, feedback
from tests.conftest import running
from tests.support import builders

pytestmark = pytest.mark.anyio
SERVICE = "/cds-services/lumbar-patient-view"
OVERRIDE = {
    "system": "urn:lumbar-cds:override-reason",
    "code": "already-managed",
    "display": "Already managed",
}


def _retention() -> dict[str, Any]:
    """Low back pain with retention of urine: the critical cauda equina card."""
    resources = builders.lbp_today()
    return builders.patient_view_request(resources)


def _plain_back_pain() -> dict[str, Any]:
    """Acute low back pain and nothing else: self-management, no imaging, STarT Back screening."""
    resources = [builders.patient(), builders.condition("lbp", "279039007", "2026-11-15")]
    resources = builders.as_of_today(resources)
    return builders.patient_view_request(resources)


async def _rows(database_url: str, table: Any) -> list[Any]:
    database = Database(database_url)
    try:
        async with database.engine.connect() as connection:
            return list((await connection.execute(select(table))).mappings().all())
    finally:
        await database.close()


async def test_every_call_is_audited_and_feedback_is_linked_to_its_rule(
    settings_factory: Any, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings_factory(database_url=database_url))
    async with running(app) as client:
        red_flag = await client.post(SERVICE, json=_retention())
        advice = await client.post(SERVICE, json=_plain_back_pain())
        assert (red_flag.status_code, advice.status_code) == (200, 200)
        cards = red_flag.json()["cards"] + advice.json()["cards"]
        assert len(cards) == 4  # cauda equina; self-management, no imaging, STarT Back
        critical, other = cards[0], cards[1]
        assert critical["indicator"] == "critical"
        feedback_body = {
            "feedback": [
                builders.accepted(critical, "2026-11-21T10:05:00Z"),
                builders.overridden(other, OVERRIDE, "physio booked", "2026-11-21T10:06:00Z"),
            ]
        }
        # the audit record is still pending in the writer: the link comes from memory
        assert (await client.post(f"{SERVICE}/feedback", json=feedback_body)).status_code == 200
        bad = await client.post(SERVICE, json={**_retention(), "context": "x"})
        assert bad.status_code == 400
    calls = await _rows(database_url, audit_call)
    assert sorted(c["status"] for c in calls) == [200, 200, 400]
    ok = next(c for c in calls if c["status"] == 200)
    assert ok["service_id"] == "lumbar-patient-view"
    assert ok["hook"] == "patient-view"
    assert ok["ruleset_version"] == app.state.lumbar.catalogue.ruleset.version
    assert ok["patient"].startswith("hmac-sha256:")
    assert "pat-45" not in ok["patient"]
    assert ok["latency_ms"] > 0
    audited_cards = await _rows(database_url, audit_card)
    assert {c["card_uuid"] for c in audited_cards} == {c["uuid"] for c in cards}
    critical_rule = critical["source"]["topic"]["code"]
    other_rule = other["source"]["topic"]["code"]
    assert {c["card_uuid"]: c["rule_id"] for c in audited_cards}[critical["uuid"]] == critical_rule
    fired = {r["rule_id"] for r in await _rows(database_url, audit_rule) if r["outcome"] == "fired"}
    assert {critical_rule, other_rule} <= fired
    stored = {f["card_uuid"]: f["rule_id"] for f in await _rows(database_url, feedback)}
    assert stored == {critical["uuid"]: critical_rule, other["uuid"]: other_rule}

    # the administrator's view: lumbar report on the same database
    capsys.readouterr()  # the service's own log lines
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUMBAR_DATABASE_URL", database_url)
        assert await anyio.to_thread.run_sync(main, ["report", "--json"]) == 0
        printed = capsys.readouterr()
        report = json.loads(printed.out)
        assert await anyio.to_thread.run_sync(main, ["report"]) == 0
        table = capsys.readouterr().out
    database_name = database_url.rsplit("/", 1)[-1]
    assert printed.err.startswith("database: ") and database_name in printed.err  # which one it read
    rules = {r["rule_id"]: r for r in report["rules"]}
    assert report["calls"] == 3
    assert (rules[critical_rule]["fired"], rules[critical_rule]["accepted"]) == (1, 1)
    assert rules[critical_rule]["acceptance_rate"] == 1.0
    assert (rules[other_rule]["overridden"], rules[other_rule]["acceptance_rate"]) == (1, 0.0)
    assert rules[other_rule]["override_reasons"] == [{"reason": "Already managed", "count": 1}]
    assert critical_rule in table
    assert table.startswith("Lumbar CDS rule report: the beginning to now, all services, 3 hook calls\n")
    assert "Already managed (1)" in table


async def test_patient_ids_can_be_kept_plain_or_not_at_all(settings_factory: Any, database_url: str) -> None:
    for mode, expected in (("plain", "pat-45"), ("none", None)):
        app = create_app(settings_factory(database_url=database_url, audit_patient_id=mode))
        async with running(app) as client:
            assert (await client.post(SERVICE, json=_retention())).status_code == 200
        rows = await _rows(database_url, audit_call)
        assert rows[-1]["patient"] == expected


async def test_a_configured_audit_key_gives_stable_pseudonyms(
    settings_factory: Any, database_url: str
) -> None:
    seen = []
    for _ in range(2):
        app = create_app(settings_factory(database_url=database_url, audit_key="k" * 32))
        async with running(app) as client:
            assert (await client.post(SERVICE, json=_retention())).status_code == 200
        seen.append((await _rows(database_url, audit_call))[-1]["patient"])
    assert seen[0] == seen[1]
    assert seen[0].startswith("hmac-sha256:")


async def test_the_admin_report_needs_the_admin_token(settings_factory: Any, database_url: str) -> None:
    app = create_app(
        settings_factory(database_url=database_url, auth="jwt", admin_token="a-long-admin-token-for-tests")
    )
    async with running(app) as client:
        missing = await client.get("/admin/report")
        wrong = await client.get("/admin/report", headers={"Authorization": "Bearer nope"})
        good = await client.get(
            "/admin/report",
            params={"since": "2026-01-01", "until": "2099-12-31", "service": "lumbar-patient-view"},
            headers={"Authorization": "Bearer a-long-admin-token-for-tests"},
        )
        bad_date = await client.get(
            "/admin/report",
            params={"since": "yesterday"},
            headers={"Authorization": "Bearer a-long-admin-token-for-tests"},
        )
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert wrong.json()["issue"][0]["diagnostics"] == "authentication failed"
    assert good.status_code == 200
    assert good.json() == {
        "since": "2026-01-01T00:00:00+00:00",
        "until": "2100-01-01T00:00:00+00:00",
        "service": "lumbar-patient-view",
        "calls": 0,
        "rules": [],
    }
    assert bad_date.status_code == 400


async def test_without_an_admin_token_the_admin_report_refuses_everyone(settings_factory: Any) -> None:
    async with running(create_app(settings_factory(auth="jwt"))) as client:
        response = await client.get("/admin/report", headers={"Authorization": "Bearer "})
    assert response.status_code == 401


def test_purge_keeps_the_retention_period(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = AuditRecord(
        "lumbar-patient-view", "patient-view", 200, 1.0, "v1", created_at=datetime(2020, 1, 1, tzinfo=UTC)
    )
    new = AuditRecord("lumbar-patient-view", "patient-view", 200, 1.0, "v1")

    async def seed() -> None:
        database = Database(database_url)
        await database.migrate()
        await database.write_audit([old, new])
        await database.close()

    anyio.run(seed)
    monkeypatch.setenv("LUMBAR_DATABASE_URL", database_url)
    monkeypatch.setenv("LUMBAR_AUDIT_RETENTION_DAYS", "30")
    assert main(["purge"]) == 0
    assert '"audit_call": 1' in capsys.readouterr().out
    remaining = anyio.run(_rows, database_url, audit_call)
    assert [r["call_id"] for r in remaining] == [new.call_id]
    assert datetime.now(UTC) - timedelta(days=1) < remaining[0]["created_at"].replace(tzinfo=UTC)
    with pytest.raises(SystemExit) as refused:
        main(["purge", "--before", "not-a-date"])
    assert refused.value.code == 2


def _saddle_and_bilateral() -> dict[str, Any]:
    """Saddle numbness and bilateral leg numbness, no sphincter disturbance: the merged cauda equina card,
    owned by the sphincter rule, which did not fire."""
    now = datetime.now(UTC)  # the service evaluates at the wall clock
    day = lambda days: (now - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    saddle = builders.finding("saddle", "44077006", day(1), display="Numbness")
    saddle["bodySite"] = {"coding": [{"system": builders.SNOMED, "code": "38864007"}]}  # perineum
    legs = builders.finding("legs", "309537005", day(2), display="Numbness of lower limb")
    side = {"coding": [{"system": builders.SNOMED, "code": "51440002"}]}  # right and left
    legs["component"] = [
        {"code": {"coding": [{"system": builders.SNOMED, "code": "272741003"}]}, "valueCodeableConcept": side}
    ]
    resources = [builders.patient(), builders.condition("lbp", "279039007", day(8)[:10]), saddle, legs]
    return builders.patient_view_request(resources)


async def test_a_merged_card_is_credited_to_each_rule_that_fired_into_it(
    settings_factory: Any, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: the card names a rule that fired (not its owner), the audit trail credits each contributing
    rule, and feedback on the card counts for each of them in the report, not for the owner."""
    app = create_app(settings_factory(database_url=database_url))
    async with running(app) as client:
        response = await client.post(SERVICE, json=_saddle_and_bilateral())
        assert response.status_code == 200, response.text
        card = next(c for c in response.json()["cards"] if c["indicator"] == "critical")
        contributors = card["extension"]["lumbar-cds"]["rules"]
        assert set(contributors) == {"rf-ces-saddle-sensory-loss", "rf-ces-bilateral-radicular"}
        assert card["source"]["topic"]["code"] == contributors[0]
        body = {"feedback": [builders.overridden(card, OVERRIDE, "known", "2026-11-21T10:06:00Z")]}
        assert (await client.post(f"{SERVICE}/feedback", json=body)).status_code == 200
    credited = {c["rule_id"] for c in await _rows(database_url, audit_card) if c["card_uuid"] == card["uuid"]}
    assert credited == set(contributors)
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUMBAR_DATABASE_URL", database_url)
        assert await anyio.to_thread.run_sync(main, ["report", "--json"]) == 0
        report = {r["rule_id"]: r for r in json.loads(capsys.readouterr().out)["rules"]}
    for rule_id in contributors:
        assert (report[rule_id]["cards"], report[rule_id]["overridden"]) == (1, 1), rule_id
    owner = report.get("rf-ces-sphincter-disturbance", {})
    assert owner.get("overridden", 0) == 0 and owner.get("cards", 0) == 0


async def test_an_unexpected_failure_is_audited_counted_and_logged(
    settings_factory: Any,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.routes import cds

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(cds, "evaluate", broken)
    app = create_app(settings_factory(database_url=database_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # as a server answers
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post(SERVICE, json=builders.patient_view_request(builders.lbp_today()))
            metrics = (await client.get("/metrics")).text
    assert response.status_code == 500
    assert response.json()["issue"][0]["diagnostics"] == "internal error"  # no internals for the client
    assert 'status="500"} 1.0' in metrics
    assert [row["status"] for row in await _rows(database_url, audit_call)] == [500]
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    errors = [line for line in logged if line.get("event") == "internal error"]
    assert errors and "RuntimeError: a bug in the engine" in errors[0]["error"]


async def test_feedback_no_store_can_keep_is_a_400_naming_the_field_on_both_databases(
    settings_factory: Any, database_url: str
) -> None:
    item = {
        "card": "a-card",
        "outcome": "overridden",
        "overrideReason": {"reason": {"code": "c" * 201}},
        "outcomeTimestamp": "2026-11-21T10:00:00Z",
    }
    good = {**item, "card": "another-card", "overrideReason": {"reason": {"code": "already-managed"}}}
    async with running(create_app(settings_factory(database_url=database_url))) as client:
        response = await client.post(f"{SERVICE}/feedback", json={"feedback": [good, item]})
    assert response.status_code == 400, response.text
    assert "feedback[1].overrideReason.reason.code" in response.text
    stored = await _rows(database_url, feedback)  # the good item stored, the bad one refused: both databases
    assert [row["card_uuid"] for row in stored] == ["another-card"]
