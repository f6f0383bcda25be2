"""The database: one async engine per application, migrations at start-up, feedback writes."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cds_hooks.response import FeedbackItem
from service.storage.tables import feedback, jwt_replay

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def _upgrade(connection: Connection) -> None:
    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class Database:
    """Feedback storage; every write is committed before the caller answers the client."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.dialect = parsed.get_backend_name()
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        self._inserts = 0

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is there already)."""
        async with self.engine.begin() as connection:
            await connection.run_sync(_upgrade)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001  # readiness reports any failure as "not reachable"
            return False
        return True

    async def store_feedback(
        self, service_id: str, items: tuple[FeedbackItem, ...], client: str | None
    ) -> int:
        """Store feedback items in one transaction; returns how many were new (duplicates are skipped)."""
        now = datetime.now(UTC)
        rows = []
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
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        statement = insert(feedback).values(rows).on_conflict_do_nothing(index_elements=["dedup_key"])
        async with self.engine.begin() as connection:
            result = await connection.execute(statement)
        return max(result.rowcount or 0, 0)

    async def remember_jti(self, issuer: str, jti: str, expires_at: int) -> bool:
        """Record a client JWT id; False if seen before (a replay). Expired ids are purged now and then."""
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        statement = insert(jwt_replay).values(issuer=issuer, jti=jti, expires_at=expires_at)
        statement = statement.on_conflict_do_nothing(index_elements=["issuer", "jti"])
        async with self.engine.begin() as connection:
            result = await connection.execute(statement)
            self._inserts += 1
            if self._inserts % 500 == 0:
                now = int(datetime.now(UTC).timestamp())
                await connection.execute(jwt_replay.delete().where(jwt_replay.c.expires_at < now - 120))
        return bool(result.rowcount)

    async def close(self) -> None:
        await self.engine.dispose()
