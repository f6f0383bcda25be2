"""Client authentication: trusted clients from LUMBAR_CLIENTS_FILE, JWT verification, replay refusal.

The clients file (format in docs/security.md and the interface contract)::

    clients:
      - issuer: https://sandbox.cds-hooks.org
        jku: [https://sandbox.cds-hooks.org/.well-known/jwks.json]
      - issuer: https://ehr.example.org
        jwks_file: ehr-example.jwks.json     # relative to the clients file
        tenants: [hospital-a]
      - issuer: https://other.example.org
        jwks: {"keys": [...]}

A malformed file refuses start-up. Every authentication failure is answered with the same bare 401; the
reason goes to the log, never the token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cds_hooks.jwt import AuthenticationError, JwksCache, TrustedClient, verify_client_jwt
from rules.engine import read_yaml

log = structlog.get_logger("lumbar.auth")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class ClientsFileError(Exception):
    """The trusted clients file cannot be used; the service refuses to start."""


class _Client(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1)
    jku: list[str] = Field(default_factory=list)
    jwks_file: str | None = None
    jwks: dict[str, Any] | None = None
    tenants: list[str] = Field(default_factory=list)

    @field_validator("jku")
    @classmethod
    def _https(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            loopback = parts.scheme == "http" and parts.hostname in LOOPBACK
            if not (parts.scheme == "https" or loopback) or not parts.hostname or parts.fragment:
                raise ValueError(f"jku must be an https URL (plain http only on loopback): {url!r}")
        return value


class _ClientsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clients: list[_Client] = Field(min_length=1)


def load_clients(path: Path) -> dict[str, TrustedClient]:
    """Read and check the trusted clients file.

    Raises:
        ClientsFileError: unreadable, malformed, a key set that does not import, or a client with no keys.
    """
    document, problems = read_yaml(path, str(path))
    if document is None:
        raise ClientsFileError(problems[0].render())
    try:
        parsed = _ClientsFile.model_validate(document.data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        line, column = document.position(tuple(first["loc"]))
        raise ClientsFileError(f"{path}:{line}:{column}: {where}: {first['msg']}") from None
    clients: dict[str, TrustedClient] = {}
    for entry in parsed.clients:
        keys = None
        try:
            if entry.jwks is not None:
                keys = KeySet.import_key_set(entry.jwks)  # type: ignore[arg-type]  # validated by joserfc
            elif entry.jwks_file is not None:
                keys = KeySet.import_key_set(json.loads((path.parent / entry.jwks_file).read_text()))
        except (OSError, ValueError, JoseError, TypeError, KeyError) as exc:
            raise ClientsFileError(f"{path}: keys of {entry.issuer}: {type(exc).__name__}: {exc}") from None
        if keys is None and not entry.jku:
            raise ClientsFileError(f"{path}: client {entry.issuer} has neither keys nor a jku")
        if keys is not None and any(key.is_private for key in keys.keys):
            raise ClientsFileError(
                f"{path}: keys of {entry.issuer} include a private key: give public keys only"
            )
        clients[entry.issuer] = TrustedClient(entry.issuer, tuple(entry.jku), keys, tuple(entry.tenants))
    return clients


async def authenticate(
    authorization: str | None,
    audience: str,
    clients: dict[str, TrustedClient],
    jwks: JwksCache,
    remember: Any,
) -> str:
    """The issuer of a valid, unreplayed client JWT; raises AuthenticationError otherwise.

    Args:
        authorization: the Authorization header.
        audience: the exact URL called (the token's ``aud``).
        remember: ``async (issuer, jti, expires) -> bool``, False for a replay (the shared replay store).
    """
    if not authorization or not authorization.startswith("Bearer "):
        raise AuthenticationError("no bearer token")
    verified = await verify_client_jwt(authorization.removeprefix("Bearer ").strip(), audience, clients, jwks)
    if not await remember(verified.issuer, verified.jti, verified.expires):
        raise AuthenticationError(f"replayed jti from {verified.issuer}")
    return verified.issuer
