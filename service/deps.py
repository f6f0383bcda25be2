"""FastAPI dependencies, as ``Annotated`` aliases for handlers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request

from cds_hooks.jwt import AuthenticationError
from service.auth import authenticate
from service.errors import ProblemError
from service.state import AppState

log = structlog.get_logger("lumbar.auth")


async def get_state(request: Request) -> AppState:
    """The application's state. Async on purpose: FastAPI runs a plain ``def`` dependency in a thread pool,
    a hop that cost about 3% of a hook call (bench profile)."""
    state: AppState = request.app.state.lumbar
    return state


State = Annotated[AppState, Depends(get_state)]


async def client_issuer(request: Request, state: AppState) -> str | None:
    """The calling client's issuer, from its JWT (CDS Hooks 2.0); ``None`` when authentication is off.

    Every failure is the same bare 401: the caller learns nothing about why. The reason is logged, never the
    token. If the shared replay store does not answer, replays are refused by this worker alone
    (``service.replay``); anything else unexpected is a 503.
    """
    settings = state.settings
    if settings.auth == "off":
        return None
    base = settings.public_base_url or f"{request.url.scheme}://{request.url.netloc}"
    audience = base + request.url.path
    assert state.jwks is not None  # set by the lifespan
    assert state.replay is not None
    try:
        return await authenticate(
            request.headers.get("authorization"),
            audience,
            state.clients,
            state.jwks,
            state.replay.remember,  # the shared store, or this worker's memory while it is down
        )
    except AuthenticationError as exc:
        state.metrics.auth_failures.inc()
        log.warning("client authentication failed", reason=str(exc), path=request.url.path)
        raise ProblemError(401, "authentication failed", headers={"WWW-Authenticate": "Bearer"}) from None
    except Exception as exc:  # noqa: BLE001  # e.g. a key set that cannot be read: refuse, retry later
        log.error("client authentication unavailable", error=type(exc).__name__)
        raise ProblemError(
            503, "authentication unavailable; retry later", headers={"Retry-After": "5"}
        ) from None


@dataclass(frozen=True)
class Caller:
    """What a CDS Hooks handler needs: the application's state and the authenticated client."""

    state: AppState
    client: str | None


async def caller(request: Request) -> Caller:
    """State and client in one dependency: FastAPI's dependency solving is a measurable part of a hook call
    (docs/performance.md), and the hook handlers always need both."""
    state = await get_state(request)
    return Caller(state, await client_issuer(request, state))


Call = Annotated[Caller, Depends(caller)]
