"""A token the real CDS Hooks sandbox signed verifies against the documented offline clients file, without
any network access (its ``jku`` is an internet URL that is not listed, so it must not be fetched)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds_hooks.jwt import AuthenticationError, JwksCache, verify_client_jwt
from service.auth import load_clients

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
TOKEN = (ROOT / "tests" / "fixtures" / "sandbox-jwt.txt").read_text().strip()
OFFLINE = ROOT / "docs" / "examples" / "sandbox-clients-offline.yaml"


def _part(index: int) -> dict[str, Any]:
    raw = TOKEN.split(".")[index]
    return dict(json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))))


def _refuse(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing may be fetched, yet {request.url} was")


@pytest.fixture
def jwks() -> JwksCache:
    return JwksCache(httpx.AsyncClient(transport=httpx.MockTransport(_refuse)))


def test_the_token_has_the_sandbox_shape() -> None:
    header, claims = _part(0), _part(1)
    assert header == {
        "alg": "ES384",
        "typ": "JWT",
        "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f",
        "jku": "https://sandbox.cds-hooks.org/.well-known/jwks.json",
    }
    assert set(claims) == {"iss", "aud", "exp", "iat", "jti"}
    assert claims["exp"] - claims["iat"] == 300


async def test_a_real_sandbox_token_verifies_offline(jwks: JwksCache) -> None:
    claims = _part(1)
    verified = await verify_client_jwt(
        TOKEN, claims["aud"], load_clients(OFFLINE), jwks, now=claims["iat"] + 1
    )
    assert verified.issuer == "https://sandbox.cds-hooks.org"
    assert verified.jti == claims["jti"]


async def test_the_same_token_is_refused_for_another_url_or_after_it_expired(jwks: JwksCache) -> None:
    claims, clients = _part(1), load_clients(OFFLINE)
    with pytest.raises(AuthenticationError):
        await verify_client_jwt(TOKEN, claims["aud"] + "x", clients, jwks, now=claims["iat"] + 1)
    with pytest.raises(AuthenticationError):
        await verify_client_jwt(TOKEN, claims["aud"], clients, jwks, now=claims["exp"] + 3600)
