"""Hot reload in-process: a valid change is swapped in whole, an invalid one keeps the last good rules."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest

from service import reload as reload_module
from service.app import create_app
from service.catalogue import RuleTestsFailed
from service.reload import reload_rules
from tests.conftest import running
from tests.support.files import edit

pytestmark = pytest.mark.anyio
ADVICE = "adv-self-management-nonspecific.yaml"
OLD_SUMMARY = (
    "Self-management: stay active, avoid bed rest, use heat and exercise; safety-net cauda equina symptoms"
)


async def test_a_valid_change_is_swapped_in(settings_factory: Any, catalog: Path) -> None:
    app = create_app(settings_factory(rules_dir=catalog, rules_watch=False))
    state = app.state.lumbar
    async with running(app) as client:
        before = (await client.get("/readyz")).json()["rules"]["version"]
        edit(catalog / ADVICE, OLD_SUMMARY, "Self-management: stay active and use heat")
        assert await reload_rules(state, catalog)
        ready = (await client.get("/readyz")).json()
        assert ready["rules"]["version"] != before
        assert ready["rules"]["reload"] == {
            "status": "ok",
            "reloads": 1,
            "at": ready["rules"]["reload"]["at"],
        }
        discovery = (await client.get("/cds-services")).json()
        assert ready["rules"]["version"] in discovery["services"][0]["usageRequirements"]
        metrics = (await client.get("/metrics")).text
    assert 'lumbar_rules_reloads_total{outcome="ok"} 1.0' in metrics
    assert f'lumbar_rules_info{{version="{ready["rules"]["version"]}"}}' in metrics


async def test_an_invalid_change_keeps_the_last_good_rules(settings_factory: Any, catalog: Path) -> None:
    app = create_app(settings_factory(rules_dir=catalog, rules_watch=False))
    state = app.state.lumbar
    async with running(app) as client:
        before = state.catalogue
        edit(catalog / ADVICE, "indicator: info", "indicator: loud")
        assert not await reload_rules(state, catalog)
        assert state.catalogue is before
        ready = (await client.get("/readyz")).json()
        metrics = (await client.get("/metrics")).text
    assert ready["status"] == "ready"  # the last good rules still serve
    reload = ready["rules"]["reload"]
    assert reload["status"] == "error"
    assert any(f"{ADVICE}:5:12: error: indicator: 'loud' is not one of" in e for e in reload["errors"])
    assert "lumbar_rules_reload_failing 1.0" in metrics
    assert 'lumbar_rules_reloads_total{outcome="error"} 1.0' in metrics


async def test_a_change_that_breaks_the_rules_own_tests_never_goes_live(
    settings_factory: Any, catalog: Path
) -> None:
    """The issue's edit: a fever threshold of 37.8 °C (in the shared definition) is valid YAML and a valid
    rule, but the rule's own test "37.9 °C is not a fever" fails, so the last good rules keep answering."""
    app = create_app(settings_factory(rules_dir=catalog, rules_watch=False))
    state = app.state.lumbar
    async with running(app) as client:
        before = state.catalogue
        edit(catalog / "definitions.yaml", "gte: 38.0, within: 7d", "gte: 37.8, within: 7d")
        assert not await reload_rules(state, catalog)
        assert state.catalogue is before
        ready = (await client.get("/readyz")).json()
        metrics = (await client.get("/metrics")).text
        edit(catalog / "definitions.yaml", "gte: 37.8, within: 7d", "gte: 38.0, within: 7d")
        assert await reload_rules(state, catalog)  # fixed: the same version as before, and healthy again
        after = (await client.get("/readyz")).json()["rules"]["reload"]
    assert ready["status"] == "ready"
    errors = ready["rules"]["reload"]["errors"]
    assert any(
        re.search(r"rf-fever-spinal-infection.yaml:[0-9]+: FAIL", e)
        and ": FAIL rf-fever-spinal-infection :: 37.9 °C is not a fever: expected fired: false" in e
        for e in errors
    ), errors
    assert "lumbar_rules_reload_failing 1.0" in metrics
    assert after["status"] == "ok"


async def test_a_catalogue_whose_tests_fail_does_not_start(settings_factory: Any, catalog: Path) -> None:
    edit(catalog / "definitions.yaml", "gte: 38.0, within: 7d", "gte: 37.8, within: 7d")
    with pytest.raises(RuleTestsFailed) as failed:
        create_app(settings_factory(rules_dir=catalog, rules_watch=False))
    assert any("37.9 °C is not a fever" in line for line in failed.value.failures)
    app = create_app(settings_factory(rules_dir=catalog, rules_watch=False, allow_failing_tests=True))
    assert app.state.lumbar.catalogue.ruleset.by_id["rf-fever-spinal-infection"]


async def test_the_watcher_reloads_within_two_seconds(settings_factory: Any, catalog: Path) -> None:
    app = create_app(settings_factory(rules_dir=catalog))
    state = app.state.lumbar
    async with running(app):
        await asyncio.sleep(0.3)  # the watcher is listening
        before = state.catalogue.ruleset.version
        started = time.monotonic()
        edit(catalog / ADVICE, OLD_SUMMARY, "Self-management: stay active and keep moving")
        while state.catalogue.ruleset.version == before:
            assert time.monotonic() - started < 2.0, "the change was not picked up within 2 seconds"
            await asyncio.sleep(0.05)
    assert state.reload.ok


async def test_a_change_the_watcher_missed_is_found_by_the_periodic_check(
    settings_factory: Any, catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change lands before the worker listens (or inotify drops it): the fingerprint check finds it."""
    app = create_app(settings_factory(rules_dir=catalog, rules_watch=False))
    state = app.state.lumbar
    edit(catalog / ADVICE, OLD_SUMMARY, "Self-management: stay active and keep moving")  # after loading
    monkeypatch.setattr(reload_module, "RECONCILE_S", 0.2)
    async with running(app):
        before = state.catalogue.ruleset.version
        stop = asyncio.Event()
        checker = asyncio.create_task(reload_module._reconcile(state, catalog, stop))
        started = time.monotonic()
        while state.catalogue.ruleset.version == before:
            assert time.monotonic() - started < 3.0, "the periodic check never reloaded"
            await asyncio.sleep(0.05)
        reloads = state.reload.reloads
        await asyncio.sleep(0.6)  # unchanged since: no further reloads
        assert state.reload.reloads == reloads == 1
        stop.set()
        await checker


def test_the_fingerprint_sees_content_names_and_removals(catalog: Path) -> None:
    first = reload_module.catalogue_fingerprint(catalog)
    assert reload_module.catalogue_fingerprint(catalog) == first
    (catalog / "extra.yaml").write_text("x")
    second = reload_module.catalogue_fingerprint(catalog)
    assert second != first
    (catalog / "extra.yaml").unlink()
    assert reload_module.catalogue_fingerprint(catalog) == first
    edit(catalog / ADVICE, "indicator: info", "indicator: warn")  # same size, later mtime
    assert reload_module.catalogue_fingerprint(catalog) != first
    assert reload_module.catalogue_fingerprint(catalog / "missing") != first


async def test_a_watcher_that_dies_makes_readyz_fail(
    settings_factory: Any, catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise OSError("inotify watch limit reached")

    monkeypatch.setattr(reload_module, "awatch", broken)
    app = create_app(settings_factory(rules_dir=catalog))
    async with running(app) as client:
        for _ in range(40):
            if app.state.lumbar.reload.watcher_stopped:
                break
            await asyncio.sleep(0.05)
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["rules"]["reload"]["watcher"] == "stopped: OSError: inotify watch limit reached"


async def test_a_reload_that_raises_does_not_end_the_watching(
    settings_factory: Any, catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings_factory(rules_dir=catalog))
    state = app.state.lumbar
    calls: list[int] = []
    real = reload_module.reload_rules

    async def flaky(*args: Any) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a loader bug")
        return await real(*args)

    monkeypatch.setattr(reload_module, "reload_rules", flaky)
    async with running(app) as client:
        await asyncio.sleep(0.3)
        before = state.catalogue.ruleset.version
        edit(catalog / ADVICE, OLD_SUMMARY, "Self-management: stay active and keep moving")
        await asyncio.sleep(0.6)
        edit(catalog / ADVICE, "stay active and keep moving", "stay active and keep walking")
        started = time.monotonic()
        while state.catalogue.ruleset.version == before:
            assert time.monotonic() - started < 3.0, "the watcher stopped after the failed reload"
            await asyncio.sleep(0.05)
        assert (await client.get("/readyz")).status_code == 200
    assert len(calls) >= 2 and not state.reload.watcher_stopped


async def test_a_catalogue_changed_while_it_is_read_is_read_again(
    settings_factory: Any, catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A half-written state is never swapped in: a write during the read means reading again."""
    app = create_app(settings_factory(rules_dir=catalog, rules_watch=False))
    state = app.state.lumbar
    real = reload_module.load_tested
    reads: list[str] = []

    def load_during_a_write(directory: Path, **kwargs: Any) -> Any:
        loaded = real(directory, **kwargs)
        reads.append(loaded[0].version)
        if len(reads) == 1:  # the editor finishes its save while the first read runs
            edit(catalog / ADVICE, "stay active and keep moving", "stay active and keep walking")
        return loaded

    monkeypatch.setattr(reload_module, "load_tested", load_during_a_write)
    monkeypatch.setattr(reload_module, "QUIET_S", 0.05)
    async with running(app):
        edit(catalog / ADVICE, OLD_SUMMARY, "Self-management: stay active and keep moving")
        assert await reload_rules(state, catalog)
    assert len(reads) == 2 and reads[0] != reads[1]
    assert state.catalogue.ruleset.version == reads[1]  # the finished save, never the one read mid-write
    assert "keep walking" in state.catalogue.ruleset.by_id[ADVICE.removesuffix(".yaml")].card.summary  # type: ignore[union-attr]


async def test_a_file_still_being_written_is_read_once_it_is_quiet(
    settings_factory: Any, catalog: Path
) -> None:
    app = create_app(settings_factory(rules_dir=catalog, rules_watch=False))
    state = app.state.lumbar
    async with running(app):
        edit(catalog / ADVICE, OLD_SUMMARY, "Self-management: stay active and keep moving")
        started = time.monotonic()
        assert await reload_rules(state, catalog)
        waited = time.monotonic() - started
    assert waited >= reload_module.QUIET_S * 0.9  # it waited for the file to be quiet
