"""Administration endpoints: the per-rule report (the same data as ``lumbar report --json``).

With ``LUMBAR_AUTH=jwt`` they need ``Authorization: Bearer <LUMBAR_ADMIN_TOKEN>``; with no admin token
configured they refuse everyone. With ``LUMBAR_AUTH=off`` (development) they are open like the rest.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import orjson
import structlog
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from service.deps import State
from service.errors import ProblemError
from service.report import build_report, parse_bound
from service.settings import Settings

router = APIRouter(tags=["Administration"])
log = structlog.get_logger("lumbar.admin")


def is_admin(request: Request, settings: Settings) -> bool:
    """Whether the call carries the admin token (always, with authentication off)."""
    if settings.auth == "off":
        return True
    header = request.headers.get("authorization") or ""
    scheme, _, presented = header.partition(" ")
    expected = settings.admin_token.get_secret_value() if settings.admin_token else None
    return expected is not None and scheme.lower() == "bearer" and hmac.compare_digest(presented, expected)


async def admin(request: Request, state: State) -> None:
    """Refuse the call unless it carries the admin token (or authentication is off)."""
    if not is_admin(request, state.settings):
        state.metrics.auth_failures.inc()
        log.warning("admin authentication failed", path=request.url.path)
        raise ProblemError(401, "authentication failed", headers={"WWW-Authenticate": "Bearer"})


@router.get("/admin/report", summary="Per-rule statistics: fired, accepted, overridden, override reasons")
async def report(
    state: State,
    _: Annotated[None, Depends(admin)],
    since: Annotated[str | None, Query(description="date or date-time (UTC if no offset)")] = None,
    until: Annotated[str | None, Query(description="date (inclusive) or date-time (exclusive)")] = None,
    service: Annotated[str | None, Query(description="a CDS service id")] = None,
) -> Response:
    try:
        start = parse_bound(since, end=False) if since else None
        end = parse_bound(until, end=True) if until else None
    except ValueError:
        raise ProblemError(400, "since and until must be ISO 8601 dates or date-times") from None
    result = await build_report(state.database, since=start, until=end, service=service)
    return Response(orjson.dumps(result.to_json()), media_type="application/json")
