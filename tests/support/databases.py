"""Throwaway databases for the storage tests: a SQLite file, or a fresh PostgreSQL database per test.

The PostgreSQL tests run when ``LUMBAR_TEST_POSTGRES_URL`` names a server where the user may create
databases (``.ci/run`` sets it: this project's machines have PostgreSQL on 127.0.0.1:5432 with trust
authentication); without it they are skipped, with one line saying how to enable them, so ``make test``
passes on a machine with only Python and make. A test database is created before the test and dropped after
it, so runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

ADMIN_DSN = os.environ.get("LUMBAR_TEST_POSTGRES_URL", "")
SKIP_HINT = (
    "To run them, set LUMBAR_TEST_POSTGRES_URL to a server where the user may create databases, e.g. "
    "LUMBAR_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test make test"
)


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def throwaway_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A ``LUMBAR_DATABASE_URL`` for an empty database of ``backend`` (``sqlite`` or ``postgresql``)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/lumbar.db"
        return
    if not ADMIN_DSN:
        pytest.skip(SKIP_HINT)
    name = f"lumbar_t_{uuid.uuid4().hex[:16]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
