"""What one application instance holds: settings, the current catalogue, clients, storage, metrics."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from cds_hooks.fhir import FhirClient
from service.catalogue import Catalogue
from service.metrics import Metrics
from service.settings import Settings
from service.storage.database import Database


@dataclass(eq=False)
class AppState:
    settings: Settings
    catalogue: Catalogue
    database: Database
    metrics: Metrics
    http: httpx.AsyncClient | None = None
    fhir: FhirClient | None = None
