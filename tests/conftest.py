"""Shared fixtures: the bundled rule set, settings on a throwaway database, an in-process app client."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from rules import BUNDLED_CATALOG
from rules.engine.compiler.ruleset import RuleSet
from service.settings import Settings
from tests.support.catalogue import bundled_ruleset
from tests.support.databases import ADMIN_DSN as POSTGRES_URL
from tests.support.databases import SKIP_HINT, throwaway_database
from tests.support.fhir_server import FhirTestServer

_POSTGRES_LEFT_OUT: list[pytest.Item] = []


def _needs_postgres(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    on_postgres = callspec is not None and "postgresql" in callspec.params.values()
    return on_postgres or item.get_closest_marker("postgres") is not None


def pytest_configure(config: pytest.Config) -> None:
    """Every service a test starts keeps its files (the audit spill folder, a default database) in a
    throwaway folder, never in the developer's ~/.local/share."""
    os.environ["LUMBAR_DATA_DIR"] = tempfile.mkdtemp(prefix="lumbar-test-data-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The two kinds of slow test, marked so ``make test-fast`` can leave them out (``make test`` runs all):
    ``e2e`` (tests/e2e: real service processes) and ``app`` (the whole application in process, with its
    database: every test that asks for settings or a database). Without ``LUMBAR_TEST_POSTGRES_URL`` the
    PostgreSQL tests are left out, and the summary says so in one line."""
    for item in items:
        if "e2e" in Path(str(item.path)).parts:
            item.add_marker(pytest.mark.e2e)
        elif {"settings_factory", "database_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.app)
    if not POSTGRES_URL:
        _POSTGRES_LEFT_OUT[:] = [item for item in items if _needs_postgres(item)]
        if _POSTGRES_LEFT_OUT:
            config.hook.pytest_deselected(items=list(_POSTGRES_LEFT_OUT))
            items[:] = [item for item in items if not _needs_postgres(item)]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _POSTGRES_LEFT_OUT:
        terminalreporter.write_line(f"{len(_POSTGRES_LEFT_OUT)} PostgreSQL tests not run. {SKIP_HINT}.")


@pytest.fixture(scope="session")
def ruleset() -> RuleSet:
    return bundled_ruleset()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings_factory(tmp_path: Path) -> Any:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "auth": "off",
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/lumbar.db",
            "data_dir": tmp_path / "data",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    """A copy of the bundled rule catalogue to edit."""
    target = tmp_path / "catalog"
    shutil.copytree(BUNDLED_CATALOG, target)
    return target


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on the embedded SQLite default and on a real PostgreSQL (a fresh database each)."""
    with throwaway_database(request.param, tmp_path) as url:
        yield url


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and an httpx client talking ASGI to it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
def fhir_server() -> Iterator[FhirTestServer]:
    with FhirTestServer() as server:
        yield server
