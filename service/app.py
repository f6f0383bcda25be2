"""``create_app(settings)``: the FastAPI application, with no side effects at import time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from cds_hooks.jwt import JwksCache
from service import __version__, collector
from service.audit import AuditWriter, PatientPseudonym
from service.audit_spill import AuditSpill
from service.auth import load_clients
from service.catalogue import build_catalogue, load_tested
from service.errors import install_error_handlers
from service.logging import configure_logging
from service.metrics import Metrics
from service.middleware import AccessLogMiddleware, BodyLimitMiddleware
from service.openapi import install_openapi
from service.prefetching import fhir_client
from service.preflight import shown_url, worker_failed
from service.reload import catalogue_fingerprint, watch_rules
from service.replay import ReplayGuard
from service.routes import admin, cds, health
from service.settings import Settings
from service.state import AppState, ReloadStatus
from service.storage.database import Database

log = structlog.get_logger("lumbar")


def create_app(
    settings: Settings | None = None, *, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the application.

    Args:
        settings: the configuration; read from the environment when omitted.
        transport: an httpx transport for calls to FHIR servers (tests); the network by default.

    Raises:
        RuleSetError: the rule catalogue is invalid, so the service refuses to start.
        RuleTestsFailed: its own embedded tests fail (unless ``LUMBAR_ALLOW_FAILING_TESTS``).
    """
    settings = settings or Settings()
    configure_logging(settings.log_level)
    fingerprint = catalogue_fingerprint(settings.rules_dir)  # before loading: a change during it is seen
    ruleset, failures = load_tested(settings.rules_dir, allow_failing_tests=settings.allow_failing_tests)
    for failure in failures:  # only with LUMBAR_ALLOW_FAILING_TESTS: said loudly, once per worker
        log.error("serving rules whose own tests fail (LUMBAR_ALLOW_FAILING_TESTS)", failure=failure)
    catalogue = build_catalogue(ruleset)
    state = AppState(
        settings,
        catalogue,
        Database(settings.database_url),
        Metrics(),
        reload=ReloadStatus(fingerprint=fingerprint),
    )
    if settings.auth == "jwt" and settings.clients_file is not None:
        state.clients = load_clients(settings.clients_file)  # a bad file refuses start-up

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.auth == "off":
            log.warning("authentication is off: every caller is trusted (development only)")
        elif not state.clients:
            log.warning("LUMBAR_AUTH=jwt without LUMBAR_CLIENTS_FILE: every CDS Hooks call will be refused")
        await state.database.migrate()
        state.pseudonym = await _pseudonym(settings, state.database)
        state.audit = AuditWriter(
            state.database,
            state.metrics,
            spill=_audit_spill(settings),
            max_pending=settings.audit_max_pending,
        )
        state.audit.start()
        state.http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(settings.fhir_timeout_s),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        state.jwks = JwksCache(state.http)
        state.replay = ReplayGuard(state.database, state.metrics)
        state.fhir = fhir_client(state.http, settings)
        state.metrics.set_ruleset(catalogue.ruleset.version, len(catalogue.ruleset.rules))
        stop = asyncio.Event()
        watcher = None
        if settings.rules_watch:
            watcher = asyncio.create_task(watch_rules(state, settings.rules_dir, stop), name="rules-watcher")
        collector.settle()  # long-lived objects out of the collector's way (service/collector.py)
        log.info(
            "ready",
            rules=len(catalogue.ruleset.rules),
            version=catalogue.ruleset.version,
            database=shown_url(settings.database_url),
        )
        try:
            yield
        finally:
            stop.set()
            if watcher is not None:
                await watcher
            await state.http.aclose()
            await state.audit.close()  # everything handed to the audit trail is written before closing
            await state.database.close()
            state.metrics.worker_stopped()

    # /docs (Swagger UI) and /redoc with their scripts and styles served by the service itself (the
    # fastapi-offline package), not from a CDN: they work on a hospital network with no internet access.
    app = FastAPIOffline(
        title="Lumbar CDS",
        version=__version__,
        lifespan=lifespan,
        description="CDS Hooks 2.0 decision support for low back pain and lower-back weakness.",
        static_url="/docs/assets",
    )
    app.state.lumbar = state
    install_error_handlers(app)
    cds.install(app)
    app.include_router(health.router)
    app.include_router(admin.router)
    install_openapi(app, list(catalogue.hooks))
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    wildcard = "*" in settings.cors_origins
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if wildcard else settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Accept"],
        allow_credentials=False,
        max_age=600,
    )
    app.add_middleware(AccessLogMiddleware)
    return app


def _audit_spill(settings: Settings) -> AuditSpill | None:
    """The folder where audit records wait during a database outage, or None (said at start-up)."""
    if settings.audit_spill_max_mb == 0:
        log.warning("LUMBAR_AUDIT_SPILL_MAX_MB=0: audit records are dropped when the database lags long")
        return None
    spill = AuditSpill(
        settings.audit_spill_dir or settings.data_dir / "audit-spill", settings.audit_spill_max_mb * 1_000_000
    )
    try:
        spill.prepare()
    except OSError as exc:  # still served: decision support does not depend on the audit trail
        log.warning(
            "the audit spill folder cannot be written: audit records are dropped when the database lags long",
            folder=str(spill.folder),
            error=str(exc),
        )
    return spill


async def _pseudonym(settings: Settings, database: Database) -> PatientPseudonym:
    """Patient ids in the audit trail: HMAC under LUMBAR_AUDIT_KEY, or under a key kept in the database."""
    if settings.audit_patient_id != "hash":
        return PatientPseudonym(settings.audit_patient_id, None)
    if settings.audit_key is not None:
        return PatientPseudonym("hash", settings.audit_key.get_secret_value().encode())
    return PatientPseudonym("hash", await database.secret("audit-patient-key"))


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings from the environment. ``lumbar serve`` has checked them; if a
    start-up fails anyway, the worker says why in one line and stops the server rather than being restarted
    in a loop (``service.preflight.worker_failed``)."""
    try:
        return create_app(Settings())
    except Exception as exc:  # noqa: BLE001  # every start-up failure ends the same way
        worker_failed(exc)
