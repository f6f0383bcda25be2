"""The database: one async engine per application, migrations at start-up, every read and write.

SQLite (the default) runs in WAL mode with ``synchronous=FULL`` and a busy timeout, so several workers can
write and a commit survives the process being killed; PostgreSQL is used as configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cds_hooks.response import FeedbackItem
from service.storage.tables import audit_call, audit_card, audit_rule, feedback, jwt_replay, service_secret

if TYPE_CHECKING:
    from service.audit import AuditRecord

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic_config() -> Any:
    from alembic.config import Config  # imported only when migrating: it is slow to import

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


_MIGRATION_LOCK = 0x4C554D42  # "LUMB": the PostgreSQL advisory lock held while migrating
HEAD = "0003"  # the newest revision in migrations/versions (a test checks it against Alembic's own head)


def _current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _upgrade(connection: Connection) -> None:
    from alembic import command

    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


_JTI_GRACE_S = 120  # expired JWT ids are kept this much longer (clock skew between replicas)


def _expired_jtis() -> Any:
    """DELETE of the JWT ids past their expiry (and the grace): the replay store's housekeeping."""
    now = int(datetime.now(UTC).timestamp())
    return delete(jwt_replay).where(jwt_replay.c.expires_at < now - _JTI_GRACE_S)


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_ROWS_PER_INSERT = 500  # x at most 10 columns: within SQLite's 32,766 bound parameters per statement


_CALL_COLUMNS = (
    "call_id",
    "hook_instance",
    "service_id",
    "hook",
    "client",
    "patient",
    "ruleset_version",
    "status",
    "latency_ms",
    "created_at",
)
_CARD_COLUMNS = ("call_id", "card_uuid", "rule_id", "indicator", "suggestions")
_RULE_COLUMNS = ("call_id", "rule_id", "outcome", "detail")


def _write_audit(connection: Connection, records: Sequence[AuditRecord]) -> None:
    """The rows of ``records`` not yet written: with SQLite in multi-row INSERT statements rather than one
    per row (see :meth:`Database.write_audit`), with PostgreSQL by the driver's executemany."""
    existing = set(
        connection.execute(
            select(audit_call.c.call_id).where(audit_call.c.call_id.in_([r.call_id for r in records]))
        ).scalars()
    )
    fresh = [r for r in records if r.call_id not in existing]
    calls = [
        (
            r.call_id,
            r.hook_instance,
            r.service_id,
            r.hook,
            r.client,
            r.patient,
            r.ruleset_version,
            r.status,
            r.latency_ms,
            r.created_at,
        )
        for r in fresh
    ]
    cards = [
        (
            r.call_id,
            card.card_uuid,
            card.rule_id,
            card.indicator,
            json.dumps(list(card.suggestions)) if card.suggestions else None,
        )
        for r in fresh
        for card in r.cards
    ]
    rules = [(r.call_id, rule.rule_id, rule.outcome, rule.detail) for r in fresh for rule in r.rules]
    tables = (
        (audit_call, _CALL_COLUMNS, calls),
        (audit_card, _CARD_COLUMNS, cards),
        (audit_rule, _RULE_COLUMNS, rules),
    )
    for table, columns, rows in tables:
        if not rows:
            continue
        if connection.dialect.name == "sqlite":
            _insert_multirow(connection, table, columns, rows)
        else:
            connection.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
    if cards:
        _link_early_feedback(connection, sorted({row[1] for row in cards}))


def _link_early_feedback(connection: Connection, card_uuids: list[str]) -> None:
    """Feedback stored before its card's audit row (the card shown by another worker a moment earlier, its
    audit still pending there) gets the rule of its card now: the card's first row, its topic's rule."""
    owner = (
        select(audit_card.c.rule_id)
        .where(audit_card.c.card_uuid == feedback.c.card_uuid)
        .order_by(audit_card.c.id)
        .limit(1)
        .scalar_subquery()
    )
    connection.execute(
        update(feedback)
        .where(feedback.c.rule_id.is_(None), feedback.c.card_uuid.in_(card_uuids))
        .values(rule_id=owner)
    )


def _insert_multirow(
    connection: Connection, table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """INSERT up to ``_ROWS_PER_INSERT`` rows per statement (SQLite, qmark parameters), each value passed
    through its column type's own bind processing, as SQLAlchemy would. (Compiling such statements with
    SQLAlchemy cost 0.4 ms per record; ``RETURNING`` with "insertmanyvalues" steps once per row.)"""
    dialect = connection.dialect
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns]
    if any(processors):
        rows = [
            tuple(
                value if process is None else process(value)
                for value, process in zip(row, processors, strict=True)
            )
            for row in rows
        ]
    placeholders = "(" + ", ".join("?" * len(columns)) + ")"
    quote = connection.dialect.identifier_preparer
    names = ", ".join(quote.format_column(table.c[name]) for name in columns)
    head = f"INSERT INTO {quote.format_table(table)} ({names}) VALUES "  # noqa: S608  # our identifiers; values bound
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        params = tuple(value for row in chunk for value in row)
        connection.exec_driver_sql(head + ", ".join([placeholders] * len(chunk)), params)


def _dialect_insert(dialect: str) -> Any:
    """The dialect's INSERT (for ON CONFLICT DO NOTHING); only that dialect's module is imported."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


T = TypeVar("T")
_ABANDONED: set[asyncio.Task[Any]] = set()


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """``awaitable``'s result, or TimeoutError after ``timeout_s`` *without waiting for it to wind down*.

    ``asyncio.wait_for`` waits for the cancelled operation to finish, and a database driver cancelled in a
    network partition may take as long again to give up its connection (a /readyz bounded at 2 s answered
    after 4 s). Here the operation is cancelled and left to finish on its own.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    _ABANDONED.add(task)  # kept referenced until it ends; its outcome is of no interest any more
    task.add_done_callback(_forget)
    raise TimeoutError(f"no answer within {timeout_s} s")


def _forget(task: asyncio.Task[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning


class Database:
    """Feedback storage; every write is committed before the caller answers the client."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        sqlite_file = self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:")
        if sqlite_file:
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        # Short, explicit waits on PostgreSQL: a partition must not hold a call (or /readyz) for minutes.
        timeouts: dict[str, Any] = {}
        if self.dialect == "postgresql":
            timeouts = {"pool_timeout": 2, "connect_args": {"timeout": 2, "command_timeout": 5}}
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True, **timeouts)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        # SQLite audit batches are written from a thread of their own, with the plain sqlite3 driver: see
        # write_audit. (An in-memory database is private to its connection, so it keeps the async path.)
        self._audit_engine: Engine | None = None
        self._audit_thread: ThreadPoolExecutor | None = None
        if sqlite_file:
            # One connection, kept, used only by the one audit thread. No prepared-statement cache: the
            # multi-row INSERTs differ in length from batch to batch, and sqlite3's cache (128 statements of
            # up to 5,000 parameters) grew the worker by ~25 MB under load.
            self._audit_engine = create_engine(
                parsed.set(drivername="sqlite"),
                connect_args={"check_same_thread": False, "cached_statements": 0},
                pool_size=1,
                max_overflow=0,
            )
            event.listen(self._audit_engine, "connect", _sqlite_pragmas)
            self._audit_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lumbar-audit")
        self._inserts = 0
        self._upsert = _dialect_insert(self.dialect)

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is there already).

        A database already at ``HEAD`` is recognised with one query, without loading Alembic's scripts: every
        worker checks at start-up, and that check is on the cold-start path.
        """
        async with self.engine.begin() as connection:
            if self.dialect == "postgresql":  # replicas starting together migrate one at a time
                await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            if await connection.run_sync(_current_revision) == HEAD:
                return
            await connection.run_sync(_upgrade)

    async def ping(self, timeout_s: float = 2.0) -> bool:
        """Whether the database answers a trivial query within ``timeout_s`` (readiness)."""

        async def select_one() -> None:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        try:
            await within(select_one(), timeout_s)
        except Exception:  # noqa: BLE001  # readiness reports any failure, a timeout too, as "not reachable"
            return False
        return True

    async def store_feedback(
        self,
        service_id: str,
        items: tuple[FeedbackItem, ...],
        client: str | None,
        rule_ids: dict[str, str] | None = None,
    ) -> int:
        """Store feedback items in one transaction; returns how many were new (duplicates are skipped).

        ``rule_ids`` maps card uuids to the rule that owns the card, where the caller knows it already.
        """
        now = datetime.now(UTC)
        rule_ids = dict(rule_ids or {})
        unknown = {item.card for item in items} - set(rule_ids)
        rows: list[dict[str, Any]] = []
        for item in items:
            wire = item.to_wire()
            key = hashlib.sha256(json.dumps([service_id, wire], sort_keys=True).encode()).hexdigest()
            reason = item.override_reason.reason if item.override_reason else None
            rows.append(
                {
                    "dedup_key": key,
                    "service_id": service_id,
                    "card_uuid": item.card,
                    "outcome": item.outcome,
                    "accepted_suggestions": json.dumps([s.id for s in item.accepted_suggestions]) or None,
                    "override_system": reason.system if reason else None,
                    "override_code": reason.code if reason else None,
                    "override_display": reason.display if reason else None,
                    "user_comment": item.override_reason.user_comment if item.override_reason else None,
                    "outcome_timestamp": item.outcome_timestamp,
                    "client": client,
                    "received_at": now,
                }
            )
        async with self.engine.begin() as connection:
            if unknown:
                rule_ids.update(await self._card_rules(connection, unknown))
            for row in rows:
                row["rule_id"] = rule_ids.get(row["card_uuid"])
            statement = (
                self._upsert(feedback).values(rows).on_conflict_do_nothing(index_elements=["dedup_key"])
            )
            result = await connection.execute(statement)
        return max(result.rowcount or 0, 0)

    async def remember_jti(self, issuer: str, jti: str, expires_at: int) -> bool:
        """Record a client JWT id; False if seen before (a replay)."""
        return (issuer, jti) in await self.remember_jtis([(issuer, jti, expires_at)])

    async def remember_jtis(self, ids: Sequence[tuple[str, str, int]]) -> set[tuple[str, str]]:
        """Record client JWT ids ``(issuer, jti, expires_at)`` in one statement; the ones not seen before.
        (An id twice in ``ids`` comes back once: the caller decides which of the two was first.) Expired ids
        are purged now and then."""
        rows = [{"issuer": issuer, "jti": jti, "expires_at": expires} for issuer, jti, expires in ids]
        statement = (
            self._upsert(jwt_replay)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["issuer", "jti"])
            .returning(jwt_replay.c.issuer, jwt_replay.c.jti)
        )
        async with self.engine.begin() as connection:
            fresh = {(row.issuer, row.jti) for row in await connection.execute(statement)}
            before, self._inserts = self._inserts, self._inserts + len(rows)
            if before // 500 != self._inserts // 500:
                await connection.execute(_expired_jtis())
        return fresh

    @staticmethod
    async def _card_rules(connection: Any, card_uuids: set[str]) -> dict[str, str]:
        query = select(audit_card.c.card_uuid, audit_card.c.rule_id).where(
            audit_card.c.card_uuid.in_(sorted(card_uuids))
        )
        return {row.card_uuid: row.rule_id for row in await connection.execute(query)}

    async def write_audit(self, records: Sequence[AuditRecord]) -> None:
        """Write audit records in one transaction (one already written is skipped: retries are safe).

        With SQLite the whole batch is one call to a worker thread using the plain sqlite3 driver, not a
        series of aiosqlite round trips: each round trip, like each SQLite statement, makes a thread give
        the GIL back to a busy event loop and wait up to the interpreter's switch interval (5 ms) to get it
        back. Under sustained load, with one statement per row, the audit backlog grew without bound
        (bench: 13,000 records pending and +60 MB after 25 s at 1,500 calls/s).
        """
        if self._audit_thread is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._audit_thread, self._write_audit_sync, records
            )
            return
        async with self.engine.begin() as connection:
            await connection.run_sync(_write_audit, records)

    def _write_audit_sync(self, records: Sequence[AuditRecord]) -> None:
        assert self._audit_engine is not None  # made with the audit thread
        with self._audit_engine.begin() as connection:
            _write_audit(connection, records)

    async def secret(self, name: str) -> bytes:
        """A random secret shared by every worker and replica: made by the first to ask, read by the rest."""
        candidate = secrets.token_hex(32)
        async with self.engine.begin() as connection:
            await connection.execute(
                self._upsert(service_secret)
                .values(name=name, value=candidate)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            value = (
                await connection.execute(select(service_secret.c.value).where(service_secret.c.name == name))
            ).scalar_one()
        return bytes.fromhex(value)

    async def purge(self, before: datetime) -> dict[str, int]:
        """Delete audit records older than ``before`` and expired JWT ids; the rows deleted per table."""
        old_calls = select(audit_call.c.call_id).where(audit_call.c.created_at < before)
        async with self.engine.begin() as connection:
            cards = await connection.execute(delete(audit_card).where(audit_card.c.call_id.in_(old_calls)))
            rules = await connection.execute(delete(audit_rule).where(audit_rule.c.call_id.in_(old_calls)))
            calls = await connection.execute(delete(audit_call).where(audit_call.c.created_at < before))
            jtis = await connection.execute(_expired_jtis())
        return {
            "audit_call": calls.rowcount or 0,
            "audit_card": cards.rowcount or 0,
            "audit_rule": rules.rowcount or 0,
            "jwt_replay": jtis.rowcount or 0,
        }

    async def close(self) -> None:
        await self.engine.dispose()
        if self._audit_thread is not None and self._audit_engine is not None:
            self._audit_thread.shutdown(wait=True)
            self._audit_engine.dispose()
