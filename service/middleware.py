"""Pure ASGI middleware (a BaseHTTPMiddleware costs about half the throughput; see spec/stack.md)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds_hooks.outcome import operation_outcome
from service.errors import ProblemError, log_reason

_log = structlog.get_logger("lumbar.access")
_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, whether announced by Content-Length or streamed, and
    bodies that take longer than ``timeout_s`` to arrive with 408 (a slow client cannot hold a worker).

    A body is read only when the handler reads it, after it has authenticated the caller: an unauthenticated
    caller cannot make a worker buffer megabytes (an announced length over the limit is refused at once)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 10.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    await _reply(send, 400, "invalid Content-Length header")
                    return
                if announced > self.max_bytes:
                    await _reply(send, 413, f"request body larger than {self.max_bytes} bytes")
                    return
        size = 0
        deadline: float | None = None
        close = {"Connection": "close"}  # the rest of a refused body is not read

        async def limited() -> Message:
            nonlocal size, deadline
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout_s  # from the first read of the body
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise ProblemError(
                    408, f"request body not received within {self.timeout_s:g} s", headers=close
                ) from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    raise ProblemError(413, f"request body larger than {self.max_bytes} bytes", headers=close)
            return message

        await self.app(scope, limited, send)


async def _reply(send: Send, status: int, diagnostics: str) -> None:
    code = {413: "too-costly", 408: "timeout"}.get(status, "invalid")
    outcome = operation_outcome(diagnostics, code=code)
    log_reason(outcome)  # on the request's log line, as for every other refusal
    body = orjson.dumps(outcome)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/fhir+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AccessLogMiddleware:
    """One JSON log line per request: method, path, status, duration. Never headers or bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            path = scope.get("path", "")
            level = "debug" if path in _QUIET and status["code"] < 400 else "info"
            getattr(_log, level)(
                "request",
                method=scope.get("method"),
                path=path,
                status=status["code"],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()
