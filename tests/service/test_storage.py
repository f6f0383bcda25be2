"""Storage on both backends: feedback, the audit trail and its writer, secrets, purge, the report, migrations.

Every test here runs twice, on the embedded SQLite default and on a fresh PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, inspect, select

from cds_hooks.response import FEEDBACK, FeedbackItem
from service.audit import AuditCard, AuditRecord, AuditRule, PatientPseudonym
from service.report import UNKNOWN_CARD, build_report, parse_bound
from service.storage.database import Database, _alembic_config
from service.storage.tables import audit_call, audit_card, audit_rule, feedback

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


def _items(*items: dict[str, Any]) -> tuple[FeedbackItem, ...]:
    return FEEDBACK.validate_json(json.dumps({"feedback": list(items)})).feedback


def accepted(card: str, suggestion: str = "s-1") -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": suggestion}],
        "outcomeTimestamp": "2026-11-01T09:05:00Z",
    }


def overridden(card: str, display: str | None, code: str = "other") -> dict[str, Any]:
    reason: dict[str, Any] = {"reason": {"code": code, "system": "http://example.org/override"}}
    if display:
        reason["reason"]["display"] = display
    reason["userComment"] = "seen by the team"
    return {
        "card": card,
        "outcome": "overridden",
        "overrideReason": reason,
        "outcomeTimestamp": "2026-11-01T09:06:00Z",
    }


def call(
    *cards: tuple[str, str],
    fired: Sequence[str] = (),
    suppressed: Sequence[str] = (),
    at: datetime = T0,
    service: str = "lumbar-patient-view",
) -> AuditRecord:
    return AuditRecord(
        service_id=service,
        hook="patient-view",
        status=200,
        latency_ms=3.2,
        ruleset_version="v1",
        hook_instance="hi-1",
        client="https://ehr.example.org",
        patient="hmac-sha256:ab",
        cards=tuple(AuditCard(uuid, rule, "critical", ("s-1",)) for uuid, rule in cards),
        rules=tuple(AuditRule(r, "fired") for r in fired)
        + tuple(AuditRule(r, "suppressed", "rf-cauda-equina") for r in suppressed),
        created_at=at,
    )


async def _count(db: Database, table: Any) -> int:
    async with db.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar_one())


async def test_feedback_is_stored_once_and_linked_to_its_rule(db: Database) -> None:
    await db.write_audit([call(("card-a", "rf-cauda-equina"), fired=["rf-cauda-equina"])])
    items = _items(accepted("card-a"), overridden("card-b", "Already done"))
    assert await db.store_feedback("lumbar-patient-view", items, "https://ehr.example.org") == 2
    assert await db.store_feedback("lumbar-patient-view", items, "https://ehr.example.org") == 0  # a retry
    async with db.engine.connect() as connection:
        rows = (await connection.execute(select(feedback).order_by(feedback.c.card_uuid))).mappings().all()
    assert [(r["card_uuid"], r["outcome"], r["rule_id"]) for r in rows] == [
        ("card-a", "accepted", "rf-cauda-equina"),
        ("card-b", "overridden", None),  # a card the audit trail has not seen
    ]
    assert rows[1]["override_display"] == "Already done"
    assert rows[1]["user_comment"] == "seen by the team"
    assert json.loads(rows[0]["accepted_suggestions"]) == ["s-1"]


async def test_feedback_that_arrives_before_its_cards_audit_row_is_linked_when_it_lands(db: Database) -> None:
    """The card was shown by another worker a moment earlier and its audit row is still pending there."""
    await db.store_feedback("lumbar-patient-view", _items(accepted("card-late")), None)
    merged = call(("card-late", "rf-ces-sphincter-disturbance"), ("card-late", "rf-ces-saddle-sensory-loss"))
    await db.write_audit([merged, call(("card-other", "rf-ivdu"))])
    async with db.engine.connect() as connection:
        rule = (await connection.execute(select(feedback.c.rule_id))).scalar_one()
    assert rule == "rf-ces-sphincter-disturbance"  # the card's topic rule, its first row


async def test_a_rule_known_to_the_caller_is_used(db: Database) -> None:
    items = _items(accepted("card-x"))
    await db.store_feedback("lumbar-patient-view", items, None, {"card-x": "test-mri-urgent"})
    async with db.engine.connect() as connection:
        assert (await connection.execute(select(feedback.c.rule_id))).scalar_one() == "test-mri-urgent"


async def test_writing_the_same_audit_record_twice_keeps_one(db: Database) -> None:
    record = call(("card-a", "rf-cauda-equina"), fired=["rf-cauda-equina", "test-mri-urgent"])
    await db.write_audit([record])
    await db.write_audit([record, call(("card-b", "adv-x"))])
    assert await _count(db, audit_call) == 2
    assert await _count(db, audit_card) == 2
    assert await _count(db, audit_rule) == 2


async def test_a_large_batch_is_stored_exactly(db: Database) -> None:
    # 1,201 calls: more rows per table than one multi-row INSERT holds, so the last statement is partial.
    records = [
        call((f"card-{i}", "rf-cauda-equina"), fired=["rf-cauda-equina"], suppressed=["adv-x"], at=T0)
        for i in range(1201)
    ]
    records[7] = AuditRecord(  # the optional values absent
        service_id="lumbar-order-sign",
        hook="order-sign",
        status=412,
        latency_ms=0.5,
        ruleset_version="v1",
        created_at=T0 + timedelta(microseconds=123_456),
    )
    await db.write_audit(records)
    assert await _count(db, audit_call) == 1201
    assert await _count(db, audit_card) == 1200
    assert await _count(db, audit_rule) == 2400
    async with db.engine.connect() as connection:
        rows = {r["call_id"]: r for r in (await connection.execute(select(audit_call))).mappings()}
        sample = (
            (await connection.execute(select(audit_card).where(audit_card.c.card_uuid == "card-1200")))
            .mappings()
            .one()
        )
    full, bare = rows[records[0].call_id], rows[records[7].call_id]
    assert (full["client"], full["patient"], full["latency_ms"], full["status"]) == (
        "https://ehr.example.org",
        "hmac-sha256:ab",
        3.2,
        200,
    )
    assert full["created_at"].replace(tzinfo=UTC) == T0  # read back as the same instant
    assert (bare["client"], bare["patient"], bare["hook_instance"], bare["status"]) == (None, None, None, 412)
    assert bare["created_at"].replace(tzinfo=UTC) == T0 + timedelta(microseconds=123_456)
    if db.dialect == "sqlite":  # stored as SQLAlchemy stores it: purge and the report compare the text
        async with db.engine.connect() as connection:
            raw = (await connection.exec_driver_sql("SELECT DISTINCT created_at FROM audit_call")).scalars()
            assert sorted(raw) == ["2026-11-01 09:00:00.000000", "2026-11-01 09:00:00.123456"]
    assert (sample["rule_id"], sample["indicator"], json.loads(sample["suggestions"])) == (
        "rf-cauda-equina",
        "critical",
        ["s-1"],
    )


async def test_sqlite_writes_an_audit_batch_in_few_statements(tmp_path: Any) -> None:
    # Each SQLite statement hands the GIL to and from the writer's thread; under load each hand-back can
    # wait 5 ms, so the statements per batch must not grow with its rows (docs/performance.md).
    from sqlalchemy import event

    database = Database(f"sqlite+aiosqlite:///{tmp_path}/audit.db")
    await database.migrate()
    statements: list[str] = []
    assert database._audit_engine is not None
    event.listen(database._audit_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        await database.write_audit([call((f"c{i}", "r"), fired=["r", "s"]) for i in range(1000)])
    finally:
        await database.close()
    inserts = [sql for sql in statements if sql.startswith("INSERT")]
    assert len(inserts) == 2 + 2 + 4  # 1,000 calls, 1,000 cards, 2,000 rules; 500 rows per statement
    assert len(statements) <= len(inserts) + 6


async def test_the_generated_secret_is_shared(db: Database, database_url: str) -> None:
    first = await db.secret("audit-patient-key")
    other = Database(database_url)
    try:
        assert await other.secret("audit-patient-key") == first
    finally:
        await other.close()
    assert len(first) == 32
    assert await db.secret("another") != first


async def test_purge_removes_old_audit_records_only(db: Database) -> None:
    now = datetime.now(UTC)
    await db.write_audit(
        [
            call(("old", "rf-cauda-equina"), fired=["rf-cauda-equina"], at=now - timedelta(days=400)),
            call(("new", "rf-cauda-equina"), fired=["rf-cauda-equina"], at=now - timedelta(days=2)),
        ]
    )
    await db.remember_jti("iss", "expired", int(now.timestamp()) - 3600)
    await db.remember_jti("iss", "live", int(now.timestamp()) + 3600)
    deleted = await db.purge(now - timedelta(days=365))
    assert deleted == {"audit_call": 1, "audit_card": 1, "audit_rule": 1, "jwt_replay": 1}
    async with db.engine.connect() as connection:
        assert (await connection.execute(select(audit_card.c.card_uuid))).scalars().all() == ["new"]
    assert await db.remember_jti("iss", "live", int(now.timestamp()) + 3600) is False  # still remembered


async def test_the_report_counts_per_rule(db: Database) -> None:
    await db.write_audit(
        [
            call(("c1", "rf-cauda-equina"), fired=["rf-cauda-equina"], suppressed=["adv-self-management"]),
            call(("c2", "rf-cauda-equina"), ("c3", "test-xray"), fired=["rf-cauda-equina", "test-xray"]),
            call(
                ("c4", "test-xray"),
                fired=["test-xray"],
                at=T0 + timedelta(days=3),
                service="lumbar-order-select",
            ),
        ]
    )
    items = _items(
        accepted("c1"),
        accepted("c1", "s-2"),  # the same card accepted twice counts once
        overridden("c2", "Patient declined"),
        overridden("c3", "Already imaged"),
        overridden("c4", "Already imaged"),
        overridden("c4", None, code="not-indicated"),
        accepted("ghost"),
    )
    await db.store_feedback("lumbar-patient-view", items[:4], None)
    await db.store_feedback("lumbar-order-select", items[4:], None)

    report = await build_report(db)
    by_rule = {r.rule_id: r for r in report.rules}
    assert report.calls == 3
    assert [r.rule_id for r in report.rules][:2] == ["rf-cauda-equina", "test-xray"]
    cauda = by_rule["rf-cauda-equina"]
    assert (cauda.fired, cauda.cards, cauda.accepted, cauda.overridden) == (2, 2, 1, 1)
    assert cauda.acceptance_rate == 0.5
    assert cauda.override_reasons == [("Patient declined", 1)]
    xray = by_rule["test-xray"]
    assert (xray.fired, xray.cards, xray.accepted, xray.overridden) == (2, 2, 0, 2)
    assert xray.override_reasons == [("Already imaged", 2), ("not-indicated", 1)]
    assert xray.acceptance_rate == 0.0
    assert by_rule["adv-self-management"].suppressed == 1
    assert by_rule["adv-self-management"].acceptance_rate is None
    assert by_rule[UNKNOWN_CARD].accepted == 1

    only = await build_report(db, service="lumbar-order-select")
    assert {r.rule_id: (r.fired, r.overridden, r.accepted) for r in only.rules} == {
        "test-xray": (1, 1, 0),
        UNKNOWN_CARD: (0, 0, 1),
    }
    window = await build_report(db, since=T0 + timedelta(days=1), until=T0 + timedelta(days=5))
    assert window.calls == 1
    assert {r.rule_id: r.fired for r in window.rules if r.fired} == {"test-xray": 1}


async def test_the_report_counts_each_call_once(db: Database) -> None:
    """Exact counts, one call and then two: a report that counted a call twice (or not at all) fails."""
    await db.write_audit([call(("c1", "rf-cauda-equina"), fired=["rf-cauda-equina"])])
    first = await build_report(db)
    await db.write_audit([call(("c2", "rf-cauda-equina"), fired=["rf-cauda-equina"])])
    second = await build_report(db)
    assert [(r.rule_id, r.fired, r.cards) for r in first.rules] == [("rf-cauda-equina", 1, 1)]
    assert [(r.rule_id, r.fired, r.cards) for r in second.rules] == [("rf-cauda-equina", 2, 2)]


def test_report_bounds() -> None:
    assert parse_bound("2026-11-01", end=False) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_bound("2026-11-01", end=True) == datetime(2026, 11, 2, tzinfo=UTC)  # the whole day
    assert parse_bound("2026-11-01T10:00:00+01:00", end=True) == datetime(2026, 11, 1, 9, tzinfo=UTC)
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_bound("last week", end=False)


async def test_patient_ids_are_pseudonymised_as_configured() -> None:
    hashed = PatientPseudonym("hash", b"k" * 32)
    assert hashed("pat-45") == hashed("pat-45")
    assert hashed("pat-45") != PatientPseudonym("hash", b"j" * 32)("pat-45")
    assert hashed("pat-45") is not None
    assert "pat-45" not in hashed("pat-45")
    assert PatientPseudonym("plain", None)("pat-45") == "pat-45"
    assert PatientPseudonym("none", None)("pat-45") is None
    with pytest.raises(ValueError, match="key"):
        PatientPseudonym("hash", None)


async def test_migrations_go_down_and_up_again(db: Database) -> None:
    def down_and_up(connection: Any) -> list[str]:
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        empty = [t for t in inspect(connection).get_table_names() if t != "alembic_version"]
        command.upgrade(config, "head")
        return empty

    async with db.engine.begin() as connection:
        assert await connection.run_sync(down_and_up) == []
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"feedback", "jwt_replay", "audit_call", "audit_card", "audit_rule", "service_secret"} <= tables


def test_head_names_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    from service.storage.database import HEAD

    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == HEAD


async def test_a_database_at_head_is_not_migrated_again(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.storage import database as module

    def refuse(_: Any) -> None:
        raise AssertionError("migrated again")

    monkeypatch.setattr(module, "_upgrade", refuse)
    await db.migrate()


@pytest.mark.postgres
def test_replicas_starting_together_migrate_one_at_a_time(tmp_path: Any) -> None:
    """PostgreSQL: several instances migrating a fresh database at once (an advisory lock serialises them)."""
    from tests.support.databases import throwaway_database

    async def start_together(url: str) -> int:
        instances = [Database(url) for _ in range(4)]
        try:
            await asyncio.gather(*(instance.migrate() for instance in instances))
            return await _count(instances[0], audit_call)
        finally:
            for instance in instances:
                await instance.close()

    with throwaway_database("postgresql", tmp_path) as url:
        assert asyncio.run(start_together(url)) == 0


LONGEST = {  # the longest override values the feedback store keeps, on both databases
    "system": "urn:" + "s" * 496,
    "code": "c" * 200,
    "display": "d" * 500,
}


async def test_the_longest_valid_feedback_is_stored_on_both_databases(db: Database) -> None:
    item = {
        "card": "x" * 200,
        "outcome": "overridden",
        "overrideReason": {"reason": LONGEST, "userComment": "ü" * 4000},
        "outcomeTimestamp": "2026-11-21T10:00:00Z",
    }
    assert await db.store_feedback("lumbar-patient-view", _items(item), None) == 1
    async with db.engine.connect() as connection:
        row = (await connection.execute(select(feedback))).mappings().one()
    assert (row["override_code"], len(row["override_display"]), len(row["user_comment"])) == (
        "c" * 200,
        500,
        4000,
    )


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("reason", "code"), "c" * 201),
        (("reason", "display"), "d" * 501),
        (("reason", "system"), "s" * 501),
        (("reason", "code"), "bad\x00code"),
        (("userComment",), "a comment with a NUL \x00 in it"),
        (("userComment",), "x" * 4001),
    ],
)
def test_feedback_a_store_cannot_keep_is_refused_as_the_clients_error(
    where: tuple[str, ...], value: str
) -> None:
    """Refused by the model, the same on both databases (PostgreSQL once answered 503 for ever)."""
    reason: dict[str, Any] = {"reason": {"code": "already-managed"}, "userComment": "ok"}
    if where == ("userComment",):
        reason["userComment"] = value
    else:
        reason["reason"][where[1]] = value
    item = {
        "card": "x",
        "outcome": "overridden",
        "overrideReason": reason,
        "outcomeTimestamp": "2026-11-21T10:00:00Z",
    }
    with pytest.raises(ValueError, match="overrideReason"):
        _items(item)
