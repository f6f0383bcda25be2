"""One real service process and one real FHIR server for the end-to-end tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fhir_server import FhirTestServer
from tests.support.live import live_service


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirTestServer]:
    with FhirTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def service_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service") / "service.log"


@pytest.fixture(scope="module")
def live(fhir: FhirTestServer, tmp_path_factory: pytest.TempPathFactory, service_log: Path) -> Iterator[str]:
    database = tmp_path_factory.mktemp("db") / "lumbar.db"
    env = {
        "LUMBAR_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "LUMBAR_FHIR_ALLOWLIST": fhir.base_url,
        "LUMBAR_FHIR_TIMEOUT_S": "2",
    }
    with live_service(env, log=service_log) as base:
        yield base


@pytest.fixture(autouse=True)
def _reset_fhir(fhir: FhirTestServer) -> None:
    fhir.resources = []
    fhir.requests.clear()
    fhir.page_size = None
    fhir.faults.__init__()  # type: ignore[misc]  # back to no faults
