"""Liveness, readiness and metrics."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from service.deps import State

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", summary="Readiness: rules loaded and database reachable")
async def readyz(state: State) -> Response:
    ruleset = state.catalogue.ruleset
    database = await state.database.ping()
    ready = database and not state.reload.watcher_stopped  # a dead watcher: rule edits would go unseen
    body = {
        "status": "ready" if ready else "not-ready",
        "rules": {
            "version": ruleset.version,
            "count": len(ruleset.rules),
            "files": ruleset.file_hashes,
            "reload": state.reload.to_json(),
        },
        "database": "reachable" if database else "unreachable",
    }
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
