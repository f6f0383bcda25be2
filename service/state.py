"""What one application instance holds: settings, the current catalogue, clients, storage, metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from cds_hooks.fhir import FhirClient
from cds_hooks.jwt import JwksCache, TrustedClient
from service.audit import AuditWriter, PatientPseudonym
from service.catalogue import Catalogue
from service.metrics import Metrics
from service.replay import ReplayGuard
from service.settings import Settings
from service.storage.database import Database


@dataclass
class ReloadStatus:
    """The outcome of the last rule reload attempt, shown on /readyz."""

    ok: bool = True
    at: str | None = None
    errors: list[str] = field(default_factory=list)
    reloads: int = 0
    fingerprint: str = ""  # of the rules directory as last loaded (or attempted), see service.reload
    watcher_stopped: str = ""  # why the file watcher died (then /readyz fails: edits go unseen)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"status": "ok" if self.ok else "error", "reloads": self.reloads}
        if self.at:
            out["at"] = self.at
        if self.errors:
            out["errors"] = self.errors
        if self.watcher_stopped:
            out["watcher"] = f"stopped: {self.watcher_stopped}"
        return out


@dataclass(eq=False)
class AppState:
    settings: Settings
    catalogue: Catalogue  # replaced whole on reload; read it once per request
    database: Database
    metrics: Metrics
    http: httpx.AsyncClient | None = None
    fhir: FhirClient | None = None
    clients: dict[str, TrustedClient] = field(default_factory=dict)  # trusted CDS clients, by issuer
    jwks: JwksCache | None = None
    replay: ReplayGuard | None = None  # set by the lifespan
    reload: ReloadStatus = field(default_factory=ReloadStatus)
    audit: AuditWriter | None = None  # started by the lifespan
    pseudonym: PatientPseudonym | None = None  # how patient ids enter the audit trail
