"""FastAPI dependencies, as ``Annotated`` aliases for handlers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import ProblemError
from service.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.lumbar
    return state


State = Annotated[AppState, Depends(get_state)]


def authenticate(state: State) -> str | None:
    """The calling client's issuer; ``None`` when authentication is off.

    With ``LUMBAR_AUTH=jwt`` every call is refused until client JWT verification is configured; the
    security issue replaces this with verification against ``LUMBAR_CLIENTS_FILE``.
    """
    if state.settings.auth == "off":
        return None
    raise ProblemError(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})


Client = Annotated[str | None, Depends(authenticate)]
