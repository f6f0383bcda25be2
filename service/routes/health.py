"""Liveness, readiness and metrics."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.deps import State
from service.routes.admin import is_admin

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", summary="Readiness: rules loaded and database reachable")
async def readyz(request: Request, state: State) -> Response:
    """Public: ready or not, the rule-set version and count, the reload outcome, the database. With the admin
    token (or authentication off) also the detail an operator needs: the rule files and their hashes, the
    reload's errors (``path:line``), the audit backlog and spill folder."""
    ruleset = state.catalogue.ruleset
    database = await state.database.ping()
    ready = database and not state.reload.watcher_stopped  # a dead watcher: rule edits would go unseen
    reload = state.reload.to_json()
    rules: dict[str, object] = {"version": ruleset.version, "count": len(ruleset.rules)}
    body: dict[str, object] = {"status": "ready" if ready else "not-ready", "rules": rules}
    if is_admin(request, state.settings):
        rules["files"] = ruleset.file_hashes
        if state.audit is not None:
            body["audit"] = await state.audit.status()
    else:
        for detail in ("errors", "watcher"):
            if detail in reload:
                reload[detail] = "detail with the admin token"
    rules["reload"] = reload
    body["database"] = "reachable" if database else "unreachable"
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
