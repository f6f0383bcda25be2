"""Settings from ``LUMBAR_*`` environment variables (the only place the project reads the environment).

Unsafe or malformed values are refused at start-up rather than discovered under load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rules import BUNDLED_CATALOG

# Set by `lumbar serve` for its workers (not a setting): the pid of the process they are children of. Here,
# not in service.metrics: importing prometheus_client before serve sets PROMETHEUS_MULTIPROC_DIR would fix
# the metrics to single-process mode.
SUPERVISOR_ENV = "LUMBAR_SUPERVISOR_PID"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/lumbar-cds``, else ``~/.local/share/lumbar-cds`` (the XDG base directory default)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lumbar-cds"


def _split(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """The service's configuration; see docs/ and the interface table for each variable."""

    model_config = SettingsConfigDict(env_prefix="LUMBAR_", extra="ignore", frozen=True)

    rules_dir: Path = BUNDLED_CATALOG
    rules_watch: bool = True  # reload the catalogue when files under rules_dir change
    # Where the service keeps its data when LUMBAR_DATABASE_URL is unset (the SQLite file lumbar.db): the same
    # place whatever the working directory, so `lumbar report` reads what `lumbar serve` wrote.
    data_dir: Path = Field(default_factory=lambda: default_data_dir())
    database_url: str = ""  # default: sqlite+aiosqlite:///<data_dir>/lumbar.db
    auth: Literal["jwt", "off"] = "jwt"
    clients_file: Path | None = None
    public_base_url: str | None = None
    fhir_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fhir_timeout_s: float = Field(default=3.0, gt=0, le=60)
    fhir_max_pages: int = Field(default=20, ge=1, le=1000)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    max_body_bytes: int = Field(default=5_000_000, ge=1024, le=200_000_000)
    body_timeout_s: float = Field(default=10.0, gt=0, le=300)  # the whole body must arrive within this
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Serve a catalogue whose own embedded tests fail (at start-up only; a reload never goes live with one).
    allow_failing_tests: bool = False
    # The audit trail: how the patient id is kept (a keyed hash, the id itself, or not at all), the hashing
    # key (generated once and kept in the database when unset), and how long audit rows are kept.
    audit_patient_id: Literal["hash", "plain", "none"] = "hash"
    audit_key: SecretStr | None = None
    audit_retention_days: int = Field(default=365, ge=1, le=36_500)
    # Where audit records wait when the database cannot take them (default <data_dir>/audit-spill) once
    # audit_max_pending wait in memory, and the most that folder may hold; 0 = no spill folder: a long
    # outage drops audit records (counted).
    audit_spill_dir: Path | None = None
    audit_max_pending: int = Field(default=20_000, ge=100, le=1_000_000)  # records in memory per worker
    audit_spill_max_mb: int = Field(default=256, ge=0, le=1_000_000)
    # Bearer token for the /admin endpoints when LUMBAR_AUTH=jwt; unset = the admin endpoints refuse everyone.
    admin_token: SecretStr | None = None

    @field_validator("fhir_allowlist", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @field_validator("log_level", "auth", "audit_patient_id", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("fhir_allowlist")
    @classmethod
    def _allowlist_urls(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            parts = urlsplit(entry)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
                raise ValueError(f"not a FHIR base URL: {entry!r} (expected http(s)://host/path, or *)")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for entry in value:
            parts = urlsplit(entry)
            plain = parts.scheme in ("http", "https") and parts.hostname and not parts.path.strip("/")
            if entry != "*" and (not plain or parts.query or parts.fragment or parts.username):
                raise ValueError(f"not an origin: {entry!r} (expected scheme://host[:port], or *)")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"not a base URL: {value!r}")
        return value.rstrip("/")

    @field_validator("audit_key", "admin_token")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (use a random value)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_database(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("database_url"):
            folder = Path(str(data.get("data_dir") or default_data_dir())).expanduser().resolve()
            data = {**data, "database_url": f"sqlite+aiosqlite:///{folder / 'lumbar.db'}"}
        return data

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return value
