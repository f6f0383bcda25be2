"""The on-disk cache of parsed rule files: the same documents as a fresh parse, and only trusted folders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rules import BUNDLED_CATALOG
from rules.engine import source
from rules.engine.ruleset import load_ruleset


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "cache"
    source.use_disk_cache(folder)
    source._PARSED.clear()
    try:
        yield folder
    finally:
        source.use_disk_cache(None)
        source._PARSED.clear()


def _documents() -> dict[str, tuple[object, dict[object, object], dict[object, object]]]:
    return {key[0]: (doc.data, doc.positions, doc.values) for key, doc in source._PARSED.items()}


def test_a_new_process_reads_what_the_first_one_parsed(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = load_ruleset(BUNDLED_CATALOG)
    fresh = _documents()
    assert len(list(cache.glob("*.json"))) == len(fresh) > 100
    source._PARSED.clear()  # as in a new process

    def no_parsing() -> None:
        raise AssertionError("a cached file was parsed again")

    monkeypatch.setattr(source, "_new_yaml", no_parsing)
    cached = load_ruleset(BUNDLED_CATALOG)
    assert cached.version == parsed.version
    assert _documents() == fresh  # data, and the line and column of every key and value


def test_an_edited_file_is_parsed_again(cache: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(BUNDLED_CATALOG, catalog)
    load_ruleset(catalog)
    rule = catalog / "adv-self-management-nonspecific.yaml"
    rule.write_text(rule.read_text().replace("indicator: info", "indicator: loud", 1))
    source._PARSED.clear()
    with pytest.raises(Exception, match="loud"):
        load_ruleset(catalog)


def test_a_folder_others_can_write_is_not_used(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    try:
        source.use_disk_cache(shared)
        assert source._disk_cache is None
        source.use_disk_cache(tmp_path / "private")
        assert source._disk_cache == tmp_path / "private"
        assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700
    finally:
        source.use_disk_cache(None)


def test_a_damaged_cache_file_is_ignored(cache: Path) -> None:
    load_ruleset(BUNDLED_CATALOG)
    for path in cache.glob("*.json"):
        path.write_text("{not json")
    source._PARSED.clear()
    assert load_ruleset(BUNDLED_CATALOG).rules


def test_a_warm_cache_spares_the_worker_fhir_resources(tmp_path: Path) -> None:
    """The ServiceRequests the rules emit are validated with fhir.resources once per cache: a process that
    loads the rules with a warm cache does not import it (90 ms and 4 MB of every start)."""
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from rules.engine.source import use_disk_cache; "
        f"use_disk_cache(Path({str(tmp_path / 'cache')!r})); "
        "from rules import BUNDLED_CATALOG; from rules.engine.ruleset import load_ruleset; "
        "load_ruleset(BUNDLED_CATALOG); print('fhir.resources' in sys.modules)"
    )

    def run() -> str:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run() == "True"  # cold: validated, and remembered
    assert len(list((tmp_path / "cache").glob("ok-*"))) > 10
    assert run() == "False"  # warm


def test_an_invalid_service_request_is_refused_and_not_remembered(cache: Path) -> None:
    from rules.engine.cards import build_service_request

    good = build_service_request(("http://loinc.org", "30679-5"), "MR Lumbar spine", "routine")
    assert good["priority"] == "routine"
    remembered = set(cache.glob("ok-*"))
    with pytest.raises(ValueError, match="not valid FHIR"):
        build_service_request(("http://loinc.org", "30679-5"), "MR Lumbar spine", " bad  code ")
    assert set(cache.glob("ok-*")) == remembered
