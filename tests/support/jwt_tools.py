"""Real signing keys, a real JWKS server, and token minting for the authentication tests."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

BASE = "https://cds.example.org"


@dataclass
class JwksServer:
    """Serves a JWK Set at /jwks.json on 127.0.0.1 and counts requests."""

    keys: list[Any] = field(default_factory=list)
    hits: int = 0

    def __post_init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def document(self) -> dict[str, Any]:
        return {"keys": [key.as_dict(private=False) for key in self.keys]}

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps(owner.document()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def ec_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": kid, "alg": "ES384", "use": "sig"})


def rsa_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS384", "use": "sig"})


def public_set(*keys: Any) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def claims(issuer: str, path: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {
        "iss": issuer,
        "aud": BASE + path,
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def token(key: Any, payload: dict[str, Any], alg: str = "ES384", **header: Any) -> str:
    head = {"alg": alg, "typ": "JWT", "kid": key.kid, **header}
    head = {k: v for k, v in head.items() if v is not None}
    return jwt.encode(head, payload, key, algorithms=[alg])


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], kid: str) -> str:
    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{b64(payload)}."


def hs256_with_public_key(key: Any, payload: dict[str, Any]) -> str:
    """The classic algorithm-confusion attack: HMAC keyed with the server's copy of the public key."""
    import hashlib
    import hmac

    head = b64({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    body = b64(payload)
    secret = json.dumps(key.as_dict(private=False)).encode()
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def tampered(good: str, **changes: Any) -> str:
    head, body, signature = good.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    return f"{head}.{b64(payload)}.{signature}"


def with_header(good: str, **changes: Any) -> str:
    """A signed token with its header altered (the signature no longer matches)."""
    head, body, signature = good.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    header.update(changes)
    return f"{b64(header)}.{body}.{signature}"
