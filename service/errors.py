"""Every 4xx/5xx answer is a FHIR OperationOutcome naming the problem."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from cds_hooks.outcome import operation_outcome, outcome_from_validation, outcome_issue, outcome_of

log = structlog.get_logger("lumbar.errors")

# FHIR IssueType codes by HTTP status.
_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    412: "incomplete",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    503: "transient",
}


def outcome_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """The OperationOutcome answer; a refusal's reason also goes on the request's log line."""
    if 400 <= status < 500:
        log_reason(body)
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/fhir+json", headers=headers
    )


class ProblemError(Exception):
    """Raised by handlers to answer with an OperationOutcome."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.headers = headers
        self.body = body or operation_outcome(
            diagnostics, code=_ISSUE_CODES.get(status, "processing"), expression=expression
        )

    @classmethod
    def invalid(cls, error: ValidationError) -> ProblemError:
        return cls(400, "invalid request", body=outcome_from_validation(error))


def install_error_handlers(app: FastAPI) -> None:
    async def problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return outcome_response(exc.status, exc.body, exc.headers)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        text = {404: "no such endpoint", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        body = operation_outcome(text, code=_ISSUE_CODES.get(exc.status_code, "processing"))
        return outcome_response(exc.status_code, body, dict(exc.headers or {}))

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()[:20]
        issues = [outcome_issue(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") for err in errors]
        return outcome_response(400, outcome_of(issues))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error(  # the bug, once, with where; the client gets no internals
            "internal error", path=request.url.path, error=f"{type(exc).__name__}: {exc}"[:1000], exc_info=exc
        )
        return outcome_response(500, operation_outcome("internal error", code="exception"))

    app.add_exception_handler(ProblemError, problem)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def log_reason(body: dict[str, Any]) -> None:
    """Put why a request was refused on its access-log line (``reason``): the diagnostics the client gets,
    which never carry a token or a header value."""
    issues = body.get("issue") if isinstance(body, dict) else None
    texts = [str(i.get("diagnostics", "")) for i in issues or () if isinstance(i, dict)]
    structlog.contextvars.bind_contextvars(reason="; ".join(t for t in texts if t)[:500])
