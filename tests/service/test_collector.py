"""The worker's memory policy (service/collector.py): the collector paused during a hook call and never left
off."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator
from typing import Any

import pytest

from service.app import create_app
from service.collector import paused
from tests.conftest import running
from tests.support import builders
from tests.support.fhir_server import FhirTestServer

SERVICE = "/cds-services/lumbar-patient-view"
pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def _fail_paused() -> None:
    with paused():
        assert not gc.isenabled()
        raise ValueError("boom")


def test_a_pause_ends_even_when_the_block_raises() -> None:
    with pytest.raises(ValueError, match="boom"):
        _fail_paused()
    assert gc.isenabled()


def test_a_pause_inside_a_pause_leaves_it_to_the_outer_one() -> None:
    with paused():
        with paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_turned_off_elsewhere_stays_off() -> None:
    gc.disable()
    with paused():
        pass
    assert not gc.isenabled()


async def test_interleaved_pauses_leave_the_collector_on() -> None:
    # Two calls whose pauses overlap, the first ending first (the pause spans an await for FHIR data).
    first_in, second_in = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        with paused():
            first_in.set()
            await second_in.wait()

    async def second() -> None:
        await first_in.wait()
        with paused():
            second_in.set()
            await asyncio.sleep(0.01)

    await asyncio.gather(first(), second())
    assert gc.isenabled()


@pytest.mark.parametrize("outcome", ["200", "400", "412", "fetched"])
async def test_the_collector_is_on_after_every_kind_of_hook_call(
    settings_factory: Any, fhir_server: FhirTestServer, outcome: str
) -> None:
    fhir_server.resources = builders.lbp_today()
    bodies = {
        "200": json.dumps(builders.patient_view_request(builders.lbp_today())).encode(),
        "400": b'{"hook": "patient-view"}',
        "412": json.dumps(builders.hook_request()).encode(),
        "fetched": json.dumps(builders.hook_request(fhir_server=fhir_server.base_url)).encode(),
    }
    app = create_app(settings_factory(fhir_allowlist=[fhir_server.base_url]))
    async with running(app) as client:
        response = await client.post(SERVICE, content=bodies[outcome])
        assert gc.isenabled()
    expected = {"200": 200, "400": 400, "412": 412, "fetched": 200}[outcome]
    assert response.status_code == expected, response.text
