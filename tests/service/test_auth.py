"""Client JWT authentication, attacked for real: real ES384/RS384 keys, a real local JWKS server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.auth import ClientsFileError, load_clients
from tests.conftest import running
from tests.support import builders
from tests.support.jwt_tools import (
    BASE,
    JwksServer,
    claims,
    ec_key,
    hs256_with_public_key,
    public_set,
    rsa_key,
    tampered,
    token,
    unsigned,
    with_header,
)

pytestmark = pytest.mark.anyio
EHR = "https://ehr.example.org"
SANDBOX_LIKE = "https://sandbox.example.org"
SERVICE = "/cds-services/lumbar-patient-view"
EC = ec_key("ec-1")
RSA = rsa_key("rsa-1")
JKU_KEY = ec_key("jku-1")
KEYS = builders.PATIENT_VIEW_KEYS
BODY = json.dumps(builders.hook_request(prefetch=dict.fromkeys(KEYS))).encode()


@asynccontextmanager
async def service(
    tmp_path: Path, settings_factory: Any, jwks: JwksServer, tenants: list[str] | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    (tmp_path / "ehr.jwks.json").write_text(json.dumps(public_set(EC)))
    clients = {
        "clients": [
            {"issuer": EHR, "jwks_file": "ehr.jwks.json", **({"tenants": tenants} if tenants else {})},
            {"issuer": "https://rsa.example.org", "jwks": public_set(RSA)},
            {"issuer": SANDBOX_LIKE, "jku": [jwks.url]},
        ]
    }
    (tmp_path / "clients.yaml").write_text(json.dumps(clients))
    app = create_app(
        settings_factory(
            auth="jwt",
            clients_file=tmp_path / "clients.yaml",
            public_base_url=BASE,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/auth.db",
        )
    )
    async with running(app) as client:
        yield client, app


def _bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}", "Content-Type": "application/json"}


def _assert_bare_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login", "diagnostics": "authentication failed"}],
    }
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_valid_es384_and_rs384_tokens_are_accepted_on_every_endpoint(
    tmp_path: Path, settings_factory: Any
) -> None:
    with JwksServer([JKU_KEY]).running() as jwks:
        async with service(tmp_path, settings_factory, jwks) as (client, _):
            discovery = await client.get(
                "/cds-services", headers=_bearer(token(EC, claims(EHR, "/cds-services")))
            )
            call = await client.post(SERVICE, content=BODY, headers=_bearer(token(EC, claims(EHR, SERVICE))))
            rsa = await client.post(
                SERVICE,
                content=BODY,
                headers=_bearer(token(RSA, claims("https://rsa.example.org", SERVICE), alg="RS384")),
            )
            feedback_path = f"{SERVICE}/feedback"
            item = {
                "feedback": [
                    {"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:00:00Z"}
                ]
            }
            feedback = await client.post(
                feedback_path, json=item, headers=_bearer(token(EC, claims(EHR, feedback_path)))
            )
            via_jku = await client.post(
                SERVICE,
                content=BODY,
                headers=_bearer(token(JKU_KEY, claims(SANDBOX_LIKE, SERVICE), jku=jwks.url)),
            )
    assert [r.status_code for r in (discovery, call, rsa, feedback, via_jku)] == [200, 200, 200, 200, 200]
    assert jwks.hits == 1


ATTACKS: dict[str, Any] = {
    "no token": lambda url: None,
    "unsigned (alg none)": lambda url: unsigned(claims(EHR, SERVICE), EC.kid),
    "HS256 keyed with the public key": lambda url: hs256_with_public_key(EC, claims(EHR, SERVICE)),
    "expired": lambda url: token(EC, claims(EHR, SERVICE, exp=1_700_000_000, iat=1_699_999_900)),
    "issued in the future": lambda url: token(EC, claims(EHR, SERVICE, iat=4_000_000_000, exp=4_000_000_100)),
    "lives longer than an hour": lambda url: token(EC, claims(EHR, SERVICE, exp=4_000_000_000)),
    "audience of another service": lambda url: token(EC, claims(EHR, "/cds-services/lumbar-order-sign")),
    "audience of another host": lambda url: token(
        EC, claims(EHR, SERVICE, aud="https://evil.example" + SERVICE)
    ),
    "no jti": lambda url: token(EC, claims(EHR, SERVICE, jti=None)),
    "unknown issuer": lambda url: token(EC, claims("https://unknown.example", SERVICE)),
    "unknown kid": lambda url: token(ec_key("ec-unknown"), claims(EHR, SERVICE)),
    "signed by another key with a known kid": lambda url: token(ec_key("ec-1"), claims(EHR, SERVICE)),
    "tampered payload": lambda url: tampered(
        token(EC, claims(EHR, SERVICE)), iss=EHR, aud=BASE + "/cds-services"
    ),
    "RSA key named with an EC algorithm": lambda url: with_header(
        token(RSA, claims("https://rsa.example.org", SERVICE), alg="RS384"), alg="ES384"
    ),
    "not a JWT typ": lambda url: token(EC, claims(EHR, SERVICE), typ="at+jwt"),
    "garbage": lambda url: "not.a.jwt",
    "oversized": lambda url: "a" * 9000 + ".b.c",
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
async def test_attacks_get_a_bare_401(attack: str, tmp_path: Path, settings_factory: Any) -> None:
    with JwksServer([JKU_KEY]).running() as jwks:
        async with service(tmp_path, settings_factory, jwks) as (client, _):
            value = ATTACKS[attack](jwks.url)
            headers = _bearer(value) if value is not None else {"Content-Type": "application/json"}
            response = await client.post(SERVICE, content=BODY, headers=headers)
    _assert_bare_401(response)


async def test_a_replayed_token_is_refused_by_every_instance(tmp_path: Path, settings_factory: Any) -> None:
    with JwksServer([JKU_KEY]).running() as jwks:
        good = token(EC, claims(EHR, SERVICE))
        async with service(tmp_path, settings_factory, jwks) as (client, _):
            first = await client.post(SERVICE, content=BODY, headers=_bearer(good))
            again = await client.post(SERVICE, content=BODY, headers=_bearer(good))
        # a second instance (another worker or replica) on the same database
        async with service(tmp_path, settings_factory, jwks) as (other, _):
            elsewhere = await other.post(SERVICE, content=BODY, headers=_bearer(good))
    assert first.status_code == 200
    _assert_bare_401(again)
    _assert_bare_401(elsewhere)


async def test_an_unlisted_jku_is_never_contacted(tmp_path: Path, settings_factory: Any) -> None:
    """interface.md: a jku is fetched only when listed; otherwise the keys on record verify the token."""
    attacker = ec_key("jku-1")  # the same kid as the trusted key, served only by the attacker's JWKS
    with (
        JwksServer([JKU_KEY]).running() as listed,
        JwksServer([attacker]).running() as unlisted,
    ):
        async with service(tmp_path, settings_factory, listed) as (client, _):
            # signed by the attacker's key, pointing at the attacker's key set
            forged = await client.post(
                SERVICE,
                content=BODY,
                headers=_bearer(token(attacker, claims(SANDBOX_LIKE, SERVICE), jku=unlisted.url)),
            )
            # signed by the issuer's real key but naming a jku that is not listed: the listed keys verify it
            genuine = await client.post(
                SERVICE,
                content=BODY,
                headers=_bearer(token(JKU_KEY, claims(SANDBOX_LIKE, SERVICE), jku=unlisted.url)),
            )
            # an issuer with inline keys whose token names a jku of its own: the inline keys verify it
            inline = await client.post(
                SERVICE, content=BODY, headers=_bearer(token(EC, claims(EHR, SERVICE), jku=unlisted.url))
            )
    _assert_bare_401(forged)
    assert genuine.status_code == 200, genuine.text
    assert inline.status_code == 200, inline.text
    assert unlisted.hits == 0
    assert listed.hits >= 1


async def test_unknown_kids_refresh_the_jwks_at_most_once_a_minute(
    tmp_path: Path, settings_factory: Any
) -> None:
    with JwksServer([JKU_KEY]).running() as jwks:
        async with service(tmp_path, settings_factory, jwks) as (client, _):
            ok = await client.post(
                SERVICE,
                content=BODY,
                headers=_bearer(token(JKU_KEY, claims(SANDBOX_LIKE, SERVICE), jku=jwks.url)),
            )
            for _ in range(20):
                await client.post(
                    SERVICE,
                    content=BODY,
                    headers=_bearer(token(ec_key("rotated"), claims(SANDBOX_LIKE, SERVICE), jku=jwks.url)),
                )
    assert ok.status_code == 200
    assert jwks.hits == 1  # the cached set is younger than a minute: no refetch however many bad kids


async def test_a_rotated_key_is_fetched_on_its_first_use(tmp_path: Path, settings_factory: Any) -> None:
    with JwksServer([JKU_KEY]).running() as jwks:
        async with service(tmp_path, settings_factory, jwks) as (client, app):
            assert (
                await client.post(
                    SERVICE,
                    content=BODY,
                    headers=_bearer(token(JKU_KEY, claims(SANDBOX_LIKE, SERVICE), jku=jwks.url)),
                )
            ).status_code == 200
            new = ec_key("jku-2")
            jwks.keys = [JKU_KEY, new]
            app.state.lumbar.jwks.min_refresh_s = 0  # as if a minute had passed
            rotated = await client.post(
                SERVICE,
                content=BODY,
                headers=_bearer(token(new, claims(SANDBOX_LIKE, SERVICE), jku=jwks.url)),
            )
    assert rotated.status_code == 200
    assert jwks.hits == 2


async def test_tenants_are_checked_when_configured(tmp_path: Path, settings_factory: Any) -> None:
    with JwksServer([JKU_KEY]).running() as jwks:
        async with service(tmp_path, settings_factory, jwks, tenants=["hospital-a"]) as (client, _):
            ok = await client.post(
                SERVICE, content=BODY, headers=_bearer(token(EC, claims(EHR, SERVICE, tenant="hospital-a")))
            )
            wrong = await client.post(
                SERVICE, content=BODY, headers=_bearer(token(EC, claims(EHR, SERVICE, tenant="hospital-b")))
            )
            missing = await client.post(
                SERVICE, content=BODY, headers=_bearer(token(EC, claims(EHR, SERVICE)))
            )
    assert ok.status_code == 200
    _assert_bare_401(wrong)
    _assert_bare_401(missing)


async def test_preflight_needs_no_token_and_health_is_open(tmp_path: Path, settings_factory: Any) -> None:
    with JwksServer([JKU_KEY]).running() as jwks:
        async with service(tmp_path, settings_factory, jwks) as (client, _):
            preflight = await client.options(
                SERVICE, headers=builders.preflight("POST", "authorization,content-type")
            )
            health = await client.get("/healthz")
    assert preflight.status_code == 200
    assert health.status_code == 200


def test_a_bad_clients_file_refuses_start_up(tmp_path: Path, settings_factory: Any) -> None:
    cases = {
        "not yaml": "clients: [",
        "no keys": json.dumps({"clients": [{"issuer": EHR}]}),
        "private key": json.dumps(
            {"clients": [{"issuer": EHR, "jwks": {"keys": [EC.as_dict(private=True)]}}]}
        ),
        "plain-http jku": json.dumps({"clients": [{"issuer": EHR, "jku": ["http://keys.example.org/jwks"]}]}),
        "loopback look-alike jku": json.dumps(
            {"clients": [{"issuer": EHR, "jku": ["http://localhost.evil.example/jwks"]}]}
        ),
        "unknown field": json.dumps(
            {"clients": [{"issuer": EHR, "jku": ["https://k.example"], "trust": "all"}]}
        ),
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        with pytest.raises(ClientsFileError):
            load_clients(path)
        with pytest.raises(ClientsFileError):
            create_app(settings_factory(auth="jwt", clients_file=path))


def test_the_sandbox_example_clients_files_load() -> None:
    """docs/examples: the public CDS Hooks sandbox, trusted through its jku or through its key inline."""
    examples = Path(__file__).parents[2] / "docs" / "examples"
    online = load_clients(examples / "sandbox-clients.yaml")["https://sandbox.cds-hooks.org"]
    assert online.jku == ("https://sandbox.cds-hooks.org/.well-known/jwks.json",)
    offline = load_clients(examples / "sandbox-clients-offline.yaml")["https://sandbox.cds-hooks.org"]
    assert offline.jku == ()
    assert offline.keys is not None
    key = offline.keys.get_by_kid("44823f3d-0b01-4a6c-a80e-b9d3e8a7226f")
    assert key.as_dict()["crv"] == "P-384"
