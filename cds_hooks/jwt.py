"""Client JWT verification for CDS Hooks 2.0 ("Trusting CDS Clients").

A CDS client signs a short-lived JWT for every call (``Authorization: Bearer <jwt>``) with an asymmetric key.
The service trusts a fixed list of issuers; each issuer's keys come from a JWK Set given inline or in a file,
or fetched from a ``jku`` URL that is listed for that issuer. A token's ``jku`` header that is not listed is
never contacted: the keys on record verify the token instead. Verification order matters: nothing is
fetched, and no signature is checked, before the algorithm, the header and the issuer are acceptable.

Replay protection (``jti`` seen before) needs shared storage and is left to the caller, which gets the
``jti`` and ``exp`` of every verified token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from cds_hooks.http import FetchError, get_bounded

# CDS Hooks 2.0: "SHALL NOT be signed using the none algorithm ... any symmetric algorithm"; ES384 and RS384
# are recommended. PS* and ES256/512, RS256/512 are accepted asymmetric algorithms too.
ALGORITHMS: dict[str, type[Any]] = {
    "ES256": ECKey,
    "ES384": ECKey,
    "ES512": ECKey,
    "RS256": RSAKey,
    "RS384": RSAKey,
    "RS512": RSAKey,
    "PS256": RSAKey,
    "PS384": RSAKey,
    "PS512": RSAKey,
}
LEEWAY_S = 60  # clock skew allowed on exp and iat
MAX_LIFETIME_S = 3600  # the spec wants tokens "very short lived"; refuse anything longer than an hour
MAX_TOKEN_BYTES = 8192


class AuthenticationError(Exception):
    """The token is not acceptable. The message is for the service's log only, never for the caller."""


@dataclass(frozen=True)
class TrustedClient:
    issuer: str
    jku: tuple[str, ...] = ()  # JWK Set URLs that may be fetched for this issuer
    keys: KeySet | None = None  # inline or file JWK Set
    tenants: tuple[str, ...] = ()  # accepted `tenant` claim values (empty: not checked)


@dataclass(frozen=True)
class VerifiedClient:
    issuer: str
    jti: str
    expires: int
    tenant: str | None


@dataclass
class JwksCache:
    """JWK Sets fetched from listed ``jku`` URLs and kept for ``ttl_s``.

    A refresh forced by an unknown ``kid`` happens at most once per ``min_refresh_s`` per URL, so a flood of
    bad ``kid`` values cannot make the service hammer the client's key server. If a refetch fails, the last
    set fetched (at most ``stale_s`` old) keeps serving: a key-server outage does not stop decision support.
    """

    http: httpx.AsyncClient
    ttl_s: float = 300.0
    min_refresh_s: float = 60.0
    stale_s: float = 86_400.0
    timeout_s: float = 3.0
    max_bytes: int = 100_000
    _entries: dict[str, tuple[KeySet, float]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def key_set(self, url: str, *, refresh: bool = False) -> KeySet:
        async with self._locks.setdefault(url, asyncio.Lock()):
            cached = self._entries.get(url)
            if cached is not None:
                age = time.monotonic() - cached[1]
                if age < self.ttl_s and not (refresh and age >= self.min_refresh_s):
                    return cached[0]
            try:
                keys = await self._fetch(url)
            except AuthenticationError:
                if cached is not None and time.monotonic() - cached[1] < self.stale_s:
                    return cached[0]
                raise
            self._entries[url] = (keys, time.monotonic())
            return keys

    async def _fetch(self, url: str) -> KeySet:
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await get_bounded(
                    self.http, url, {"Accept": "application/json"}, self.max_bytes, f"JWKS {url}"
                )
        except FetchError as exc:
            raise AuthenticationError(str(exc)) from None
        except TimeoutError:
            raise AuthenticationError(f"JWKS {url} could not be fetched: TimeoutError") from None
        try:
            return KeySet.import_key_set(json.loads(body))
        except (ValueError, JoseError, TypeError, KeyError) as exc:
            raise AuthenticationError(f"JWKS {url} is not a JWK Set: {type(exc).__name__}") from None


def _segment(token: str, index: int) -> dict[str, Any]:
    try:
        part = token.split(".")[index]
        decoded = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError) as exc:
        raise AuthenticationError(f"malformed token: {type(exc).__name__}") from None
    if not isinstance(decoded, dict):
        raise AuthenticationError("malformed token: not a JSON object")
    return decoded


def _find(keys: KeySet, kid: str) -> Any | None:
    return next((key for key in keys.keys if key.kid == kid), None)


async def verify_client_jwt(
    token: str, audience: str, clients: dict[str, TrustedClient], jwks: JwksCache, now: float | None = None
) -> VerifiedClient:
    """Verify a CDS client's JWT for a call to ``audience`` (the exact URL called).

    Raises:
        AuthenticationError: for any reason at all; the message names it for the log.
    """
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise AuthenticationError("malformed token")
    header = _segment(token, 0)
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise AuthenticationError(f"algorithm {str(alg)[:20]!r} is not an accepted asymmetric algorithm")
    if header.get("typ") != "JWT":
        raise AuthenticationError("header typ must be JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthenticationError("header kid is required")
    issuer = _segment(token, 1).get("iss")
    client = clients.get(issuer) if isinstance(issuer, str) else None
    if client is None or not isinstance(issuer, str):
        raise AuthenticationError(f"unknown issuer {str(issuer)[:100]!r}")
    jku = header.get("jku")
    # interface.md: a jku is fetched only when listed for the issuer; otherwise the keys on record are used
    key = await _key(client, kid, jku if jku in client.jku else None, jwks)
    if not isinstance(key, ALGORITHMS[alg]):
        raise AuthenticationError(f"key {kid!r} does not match algorithm {alg}")
    try:
        claims = jwt.decode(token, key, algorithms=[alg]).claims
    except JoseError as exc:
        raise AuthenticationError(f"signature: {type(exc).__name__}") from None
    return _check_claims(claims, issuer, audience, client, time.time() if now is None else now)


async def _key(client: TrustedClient, kid: str, listed_jku: str | None, jwks: JwksCache) -> Any:
    """The key ``kid`` from the listed ``jku`` named by the token, else from the keys on record.

    Keys on record are the inline or file JWK Set, then the issuer's listed ``jku`` URLs in order.
    """
    if listed_jku is None and client.keys is not None:
        key = _find(client.keys, kid)
        if key is not None:
            return key
    for url in (listed_jku,) if listed_jku is not None else client.jku:
        key = _find(await jwks.key_set(url), kid)
        if key is None:  # perhaps a rotated key: refresh, at most once a minute
            key = _find(await jwks.key_set(url, refresh=True), kid)
        if key is not None:
            return key
    if client.keys is None and not client.jku:
        raise AuthenticationError("no keys on record for this issuer")
    raise AuthenticationError(f"unknown kid {kid[:64]!r}")


def _check_claims(
    claims: dict[str, Any], issuer: str, audience: str, client: TrustedClient, now: float
) -> VerifiedClient:
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise AuthenticationError(f"aud does not name this endpoint ({audience})")
    exp, iat, jti = claims.get("exp"), claims.get("iat"), claims.get("jti")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp + LEEWAY_S < now:
        raise AuthenticationError("expired or no exp")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or iat - LEEWAY_S > now:
        raise AuthenticationError("issued in the future or no iat")
    if exp - iat > MAX_LIFETIME_S:
        raise AuthenticationError("token lives longer than an hour")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise AuthenticationError("jti is required")
    tenant = claims.get("tenant")
    if client.tenants and tenant not in client.tenants:
        raise AuthenticationError("tenant is not accepted for this issuer")
    return VerifiedClient(issuer, jti, int(exp), tenant if isinstance(tenant, str) else None)
