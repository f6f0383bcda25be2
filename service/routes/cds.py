"""CDS Hooks endpoints. Handlers parse the raw body with the slim strict models and delegate."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, FastAPI, Request
from pydantic import ValidationError
from starlette.responses import Response
from starlette.routing import Route

from cds_hooks.outcome import outcome_from_validation, outcome_issue, outcome_of
from cds_hooks.request import parse_hook_request
from cds_hooks.response import ParsedFeedback, parse_feedback
from rules.engine import Evaluation, evaluate
from service import collector
from service.audit import AuditRecord, from_evaluation
from service.catalogue import Catalogue
from service.deps import Call, client_issuer
from service.errors import ProblemError
from service.prefetching import Completed, complete_request
from service.state import AppState

router = APIRouter()
log = structlog.get_logger("lumbar.cds")
JSON = "application/json"


@router.get("/cds-services", tags=["CDS Hooks"], summary="CDS Hooks discovery")
async def discovery(call: Call) -> Response:
    return Response(call.state.catalogue.discovery, media_type=JSON)


HOOK_CALL_PATH = "/cds-services/{service_id}"


def install(app: FastAPI) -> None:
    """Add the CDS Hooks routes. The hook call is a plain Starlette route placed first: FastAPI's route
    matching and dependency solving were a fifth of a small hook call (docs/performance.md); its OpenAPI
    operation is written by service/openapi.py."""
    app.router.routes.insert(0, Route(HOOK_CALL_PATH, call_service, methods=["POST"], name="call_service"))
    app.include_router(router)


async def call_service(request: Request) -> Response:
    """Call a CDS service."""
    started = time.perf_counter()
    service_id: str = request.path_params["service_id"]
    state: AppState = request.app.state.lumbar  # (no Caller object per call: the hot path, see install)
    client = await client_issuer(request, state)
    catalogue = state.catalogue  # one read: the whole call uses one rule set even if a reload happens
    hook = catalogue.hooks.get(service_id)
    if hook is None:
        raise ProblemError(404, f"unknown CDS service {service_id!r}", expression=["id"])
    audit = _Audit(state, service_id, hook, client, catalogue.ruleset.version, started)
    body = await request.body()
    # The collector stays paused until the parsed request has been released (service/collector.py): a
    # collection while it is alive would traverse all of it, 10 ms for 5,000 Observations (bench profile).
    try:
        with collector.paused():
            evaluation, answer = await _evaluate(state, catalogue, service_id, hook, body, audit)
    except ProblemError as exc:  # refused (400, 412): audited too
        audit.done(exc.status)
        raise
    except Exception:  # a bug: the 500 is audited and counted too (the error handler logs it)
        audit.done(500)
        raise
    _record(state, evaluation, service_id, hook, started)
    audit.done(200, evaluation)
    return Response(answer, media_type=JSON)


async def _evaluate(
    state: AppState, catalogue: Catalogue, service_id: str, hook: str, body: bytes, audit: _Audit
) -> tuple[Evaluation, bytes]:
    """Parse, complete the prefetch, evaluate, render: the evaluation and the response body."""
    try:
        hook_request = parse_hook_request(body)
    except ValidationError as exc:
        raise ProblemError.invalid(exc) from None
    audit.hook_instance, audit.patient = hook_request.hook_instance, hook_request.context.patient_id
    if hook_request.hook != hook:
        raise ProblemError(
            400,
            f"hook {hook_request.hook!r} sent to service {service_id!r}, which serves {hook!r}",
            expression=["hook"],
        )
    structlog.contextvars.bind_contextvars(hookInstance=hook_request.hook_instance, service=service_id)
    templates = catalogue.templates(hook)
    assert state.fhir is not None  # set by the lifespan
    fetch_started = time.perf_counter()
    completed = await complete_request(state.fhir, catalogue.ruleset, hook_request, templates)
    if completed.request is not hook_request:
        _account(state, catalogue, completed, fetch_started)
    evaluation = evaluate(catalogue.ruleset, completed.request, datetime.now(UTC))
    return evaluation, orjson.dumps(evaluation.response().to_wire())


def _account(state: AppState, catalogue: Catalogue, completed: Completed, fetch_started: float) -> None:
    """Count and log what fetching gave; a 412 naming every key that could not be had when nothing about
    the patient could be read. A key unavailable for one resource type is evaluated without (its cards say
    so), logged and counted."""
    metrics = state.metrics
    unavailable, refused = completed.unavailable, completed.refused
    outcome = "failed" if refused else "partial" if unavailable else "ok"
    metrics.fhir_fetches.labels(outcome).inc()
    metrics.fhir_latency.labels(outcome).observe(time.perf_counter() - fetch_started)
    for kind in catalogue.ruleset.unavailable_types(completed.request.hook, unavailable):
        metrics.prefetch_unavailable.labels(kind).inc()
    for key, why in unavailable.items():
        log.warning("prefetch unavailable", key=key, reason=why, evaluated=not refused)
    if refused:
        raise ProblemError(
            412,
            "required data unavailable: nothing about the patient could be read",
            body=outcome_of(
                [
                    outcome_issue(
                        f"required data unavailable: prefetch {key!r}: {why}",
                        code="processing",
                        expression=[f"prefetch.{key}"],
                    )
                    for key, why in unavailable.items()
                ]
            ),
        )


def _record(state: AppState, evaluation: Evaluation, service_id: str, hook: str, started: float) -> None:
    metrics = state.metrics
    for rule_id, error in evaluation.errors.items():
        metrics.rule_errors.labels(rule_id).inc()
        log.error("rule failed", rule=rule_id, error=error)
    for note in evaluation.notes:
        log.info("data quality", note=note)
    fired = evaluation.fired()
    for rule_id in fired:
        metrics.rules_fired.labels(rule_id).inc()
    elapsed = time.perf_counter() - started
    metrics.hook_latency.labels(service_id).observe(elapsed)
    log.info(
        "hook call",
        hook=hook,
        cards=len(evaluation.cards),
        fired=fired,
        context=evaluation.has_back_pain,
        duration_ms=round(elapsed * 1000, 2),
    )


class _Audit:
    """Hands one call's record to the audit trail, whatever its outcome (and counts it in the metrics)."""

    def __init__(
        self, state: AppState, service_id: str, hook: str, client: str | None, version: str, started: float
    ) -> None:
        self.state, self.service_id, self.hook, self.client = state, service_id, hook, client
        self.version, self.started = version, started
        self.hook_instance: str | None = None  # known once the request has been parsed
        self.patient: str | None = None

    def done(self, status: int, evaluation: Evaluation | None = None) -> None:
        self.state.metrics.hook_calls.labels(self.service_id, self.hook, str(status)).inc()
        cards, rules = from_evaluation(evaluation) if evaluation is not None else ((), ())
        assert self.state.audit is not None  # set by the lifespan
        assert self.state.pseudonym is not None
        self.state.audit.submit(
            AuditRecord(
                service_id=self.service_id,
                hook=self.hook,
                status=status,
                latency_ms=round((time.perf_counter() - self.started) * 1000, 3),
                ruleset_version=self.version,
                hook_instance=self.hook_instance,
                client=self.client,
                patient=self.state.pseudonym(self.patient),
                cards=cards,
                rules=rules,
            )
        )


@router.post("/cds-services/{service_id}/feedback", tags=["CDS Hooks"], summary="Feedback on cards")
async def feedback(service_id: str, request: Request, call: Call) -> Response:
    state, client = call.state, call.client
    if service_id not in state.catalogue.hooks:
        raise ProblemError(404, f"unknown CDS service {service_id!r}", expression=["id"])
    try:
        parsed = parse_feedback(await request.body())
    except ValidationError as exc:
        raise ProblemError.invalid(exc) from None
    assert state.audit is not None  # set by the lifespan
    audit = state.audit
    known = {item.card: rule for item in parsed.items if (rule := audit.rule_for_card(item.card)) is not None}
    stored = 0
    if parsed.items:
        try:
            stored = await state.database.store_feedback(service_id, parsed.items, client, known)
        except Exception as exc:  # noqa: BLE001  # not acknowledged, so the client may retry: nothing is lost
            log.error("feedback not stored", error=type(exc).__name__)
            raise ProblemError(
                503, "feedback could not be stored; retry later", headers={"Retry-After": "5"}
            ) from None
    for item in parsed.items:
        state.metrics.feedback.labels(item.outcome).inc()
    log.info("feedback", service=service_id, items=len(parsed.items), new=stored, refused=len(parsed.refused))
    if parsed.error is not None:  # the valid items are stored; the refused ones are named, each on its own
        raise ProblemError(400, "invalid feedback items", body=_refused_items(parsed))
    return Response(status_code=200)


def _refused_items(parsed: ParsedFeedback) -> dict[str, Any]:
    assert parsed.error is not None
    body = outcome_from_validation(parsed.error)
    total = len(parsed.items) + len(parsed.refused)
    refused = ", ".join(f"feedback[{i}]" for i in parsed.refused)
    summary = (
        f"{len(parsed.items)} of {total} items stored; refused: {refused} (fix them and send them again; "
        "sending the stored items again is harmless)"
    )
    body["issue"].append(outcome_issue(summary, code="informational", severity="information"))
    return body
