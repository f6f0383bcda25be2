"""Settings refuse unsafe or malformed values at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_are_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LUMBAR_AUTH", "LUMBAR_FHIR_ALLOWLIST", "LUMBAR_CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.auth == "jwt"
    assert settings.fhir_allowlist == []
    assert settings.fhir_timeout_s == 3.0
    assert settings.max_body_bytes == 5_000_000


def test_environment_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUMBAR_FHIR_ALLOWLIST", "https://ehr.example.org/fhir, https://other.example/r4")
    monkeypatch.setenv("LUMBAR_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("LUMBAR_LOG_LEVEL", "DEBUG")
    settings = Settings()
    assert settings.fhir_allowlist == ["https://ehr.example.org/fhir", "https://other.example/r4"]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LUMBAR_AUTH", "maybe"),
        ("LUMBAR_FHIR_ALLOWLIST", "ehr.example.org"),
        ("LUMBAR_FHIR_ALLOWLIST", "https://ehr.example.org/fhir?x=1"),
        ("LUMBAR_FHIR_TIMEOUT_S", "0"),
        ("LUMBAR_MAX_BODY_BYTES", "-1"),
        ("LUMBAR_DATABASE_URL", "mysql://x"),
        ("LUMBAR_PUBLIC_BASE_URL", "cds.example.org"),
        ("LUMBAR_CORS_ORIGINS", "https://sandbox.cds-hooks.org/app"),
        ("LUMBAR_CORS_ORIGINS", "sandbox.cds-hooks.org"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_the_default_database_is_the_same_wherever_a_command_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LUMBAR_DATABASE_URL", raising=False)
    monkeypatch.delenv("LUMBAR_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    urls = set()
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        monkeypatch.chdir(folder)
        urls.add(Settings().database_url)
    assert urls == {f"sqlite+aiosqlite:///{tmp_path / 'xdg' / 'lumbar-cds' / 'lumbar.db'}"}
    monkeypatch.setenv("LUMBAR_DATA_DIR", str(tmp_path / "data"))
    assert Settings().database_url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'lumbar.db'}"
    monkeypatch.setenv("LUMBAR_DATABASE_URL", "postgresql+asyncpg://lumbar@db/lumbar")
    assert Settings().database_url == "postgresql+asyncpg://lumbar@db/lumbar"  # an explicit URL wins
