"""Hostile input against the real server: every rejection a clear 4xx, no 5xx, no hang; then still healthy.

And the secrets test: with debug logging on, neither the FHIR access token nor any client JWT appears
anywhere in the service's complete log output.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support import builders
from tests.support.fhir_server import FhirTestServer
from tests.support.jwt_tools import claims, ec_key, public_set, token
from tests.support.live import live_service

pytestmark = pytest.mark.e2e
ISSUER = "https://ehr.example.org"
KEY = ec_key("ehr-key")
SERVICE = "/cds-services/lumbar-patient-view"
ACCESS_TOKEN = "fhir-access-token-4c1f9e0b-do-not-log"
KEYS = builders.PATIENT_VIEW_KEYS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fhir: FhirTestServer) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "clients.yaml").write_text(json.dumps({"clients": [{"issuer": ISSUER, "jwks": public_set(KEY)}]}))
    log = root / "service.log"
    env = {
        "LUMBAR_AUTH": "jwt",
        "LUMBAR_CLIENTS_FILE": str(root / "clients.yaml"),
        "LUMBAR_LOG_LEVEL": "debug",
        "LUMBAR_DATABASE_URL": f"sqlite+aiosqlite:///{root}/db.sqlite",
        "LUMBAR_FHIR_ALLOWLIST": fhir.base_url,
        "LUMBAR_BODY_TIMEOUT_S": "2",
        "LUMBAR_FHIR_TIMEOUT_S": "2",
    }
    with live_service(env, log=log) as base:
        yield base, log


def _auth(base: str, path: str = SERVICE) -> dict[str, str]:
    aud = claims(ISSUER, path)
    aud["aud"] = base + path
    return {"Authorization": f"Bearer {token(KEY, aud)}", "Content-Type": "application/json"}


def _request(**overrides: Any) -> dict[str, Any]:
    body = builders.hook_request(prefetch=dict.fromkeys(KEYS))
    body.update(overrides)
    return body


def _many_observations(count: int) -> bytes:
    resources = [
        builders.patient(),
        builders.condition("lbp", "279039007", "2026-11-15"),
        builders.finding("ret", "267064002", "2026-11-20"),
    ]
    resources += [builders.finding(f"o{i}", "75367002", "2026-11-01", value=True) for i in range(count)]
    resources = builders.as_of_today(resources)
    return json.dumps(_request(prefetch=builders.prefetch_for(resources, list(KEYS)))).encode()


def _nested(depth: int) -> bytes:
    return (
        json.dumps(_request()).encode()[:-1]
        + b',"extension":'
        + b'{"a":' * depth
        + b"1"
        + b"}" * depth
        + b"}"
    )


CORPUS: dict[str, tuple[bytes, set[int]]] = {
    "empty body": (b"", {400}),
    "not JSON": (b"\x00\xff\xfe garbage", {400}),
    "JSON array": (b"[1,2,3]", {400}),
    "hook is a number": (json.dumps(_request(hook=5)).encode(), {400}),
    "context is a string": (json.dumps(_request(context="x")).encode(), {400}),
    "prefetch is a list": (json.dumps(_request(prefetch=[])).encode(), {400}),
    "patientId is a number": (
        json.dumps(_request(context={"patientId": 1, "userId": "Practitioner/1"})).encode(),
        {400},
    ),
    "boolean as a string": (
        json.dumps(
            _request(
                prefetch={
                    **dict.fromkeys(KEYS),
                    "observations": builders.bundle(
                        {**builders.finding("x", "267064002", "2026-11-20"), "valueBoolean": "true"}
                    ),
                }
            )
        ).encode(),
        {400},
    ),
    "invalid date": (
        json.dumps(
            _request(
                prefetch={
                    **dict.fromkeys(KEYS),
                    "observations": builders.bundle(
                        {
                            **builders.finding("x", "267064002", "2026-11-20"),
                            "effectiveDateTime": "2026-02-30",
                        }
                    ),
                }
            )
        ).encode(),
        {400},
    ),
    "NaN in a quantity": (
        json.dumps(_request()).encode()[:-1] + b',"prefetch":{"o":{"resourceType":"Observation",'
        b'"status":"final","code":{},"valueQuantity":{"value":NaN}}}}',
        {400},
    ),
    "a 200 kB string": (
        json.dumps(
            _request(
                prefetch={
                    **dict.fromkeys(KEYS),
                    "observations": builders.bundle(
                        {**builders.finding("x", "267064002", "2026-11-20"), "valueString": "x" * 200_000}
                    ),
                }
            )
        ).encode(),
        {400},
    ),
    "nested 10,000 deep": (_nested(10_000), {400}),
    "nested 150 deep (allowed)": (_nested(150), {200}),
    "unknown resource types in a Bundle": (
        json.dumps(
            _request(
                prefetch={
                    **dict.fromkeys(KEYS),
                    "observations": {
                        "resourceType": "Bundle",
                        "entry": [
                            {"resource": {"resourceType": "Spaceship", "id": "x"}},
                            {"resource": {"resourceType": "Immunization", "id": "y"}},
                        ],
                    },
                }
            )
        ).encode(),
        {200},
    ),
    "a resourceType that is not a name": (
        json.dumps(
            _request(
                prefetch={
                    **dict.fromkeys(KEYS),
                    "observations": {
                        "resourceType": "Bundle",
                        "entry": [{"resource": {"resourceType": "../../etc/passwd"}}],
                    },
                }
            )
        ).encode(),
        {400},
    ),
    "6 MB body": (b'{"hook":"' + b"a" * 6_000_000 + b'"}', {413}),
    "10,000 Observations": (_many_observations(10_000), {200}),
    "internal fhirServer not on the allow-list": (
        json.dumps(builders.hook_request(fhir_server="http://169.254.169.254/latest")).encode(),
        {412},
    ),
}


@pytest.mark.parametrize("name", list(CORPUS), ids=list(CORPUS))
def test_hostile_request(server: tuple[str, Path], name: str) -> None:
    base, _ = server
    body, expected = CORPUS[name]
    started = time.monotonic()
    response = httpx.post(base + SERVICE, content=body, headers=_auth(base), timeout=30)
    assert response.status_code in expected, (response.status_code, response.text[:300])
    assert time.monotonic() - started < 15
    if response.status_code >= 400:
        assert response.json()["resourceType"] == "OperationOutcome"


def test_a_chunked_body_over_the_limit_is_413(server: tuple[str, Path]) -> None:
    base, _ = server

    def chunks() -> Iterator[bytes]:
        for _ in range(7):
            yield b" " * 1_000_000

    response = httpx.post(base + SERVICE, content=chunks(), headers=_auth(base), timeout=30)
    assert response.status_code == 413


def test_a_slow_body_gets_408_instead_of_holding_a_worker(server: tuple[str, Path]) -> None:
    base, _ = server
    parts = urlsplit(base)
    headers = _auth(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        request = (
            f"POST {SERVICE} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f'Authorization: {headers["Authorization"]}\r\nContent-Length: 1000\r\n\r\n{{"hook":'
        )
        sock.sendall(request.encode())
        started = time.monotonic()
        answer = sock.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 6


def test_still_healthy_and_correct_after_the_corpus(server: tuple[str, Path], fhir: FhirTestServer) -> None:
    base, _ = server
    assert httpx.get(base + "/healthz").status_code == 200
    assert httpx.get(base + "/readyz").json()["status"] == "ready"
    fhir.resources = builders.lbp_today()
    body = builders.hook_request(fhir_server=fhir.base_url)
    body["fhirAuthorization"] = builders.fhir_authorization(ACCESS_TOKEN)
    response = httpx.post(base + SERVICE, json=body, headers=_auth(base), timeout=30)
    assert response.status_code == 200
    assert response.json()["cards"][0]["indicator"] == "critical"
    assert {r.headers.get("Authorization") for r in fhir.requests} == {f"Bearer {ACCESS_TOKEN}"}


def test_no_secret_is_ever_logged(server: tuple[str, Path], fhir: FhirTestServer) -> None:
    base, log = server
    fhir.faults.status = 500  # a failing FHIR server: the error path must not log the token either
    body = builders.hook_request(fhir_server=fhir.base_url)
    body["fhirAuthorization"] = builders.fhir_authorization(ACCESS_TOKEN)
    jwt_header = _auth(base)
    assert httpx.post(base + SERVICE, json=body, headers=jwt_header, timeout=30).status_code == 412
    bad = {"Authorization": "Bearer " + jwt_header["Authorization"][7:-4] + "AAAA"}
    assert httpx.post(base + SERVICE, json=body, headers=bad, timeout=30).status_code == 401
    fhir.faults.status = None
    time.sleep(0.5)
    text = log.read_text()
    assert '"level": "debug"' in text  # debug logging was really on
    assert ACCESS_TOKEN not in text
    assert jwt_header["Authorization"][7:] not in text
    assert jwt_header["Authorization"][7:].split(".")[2] not in text  # not even the signature


def test_oversized_headers_get_431_and_leave_the_worker_small(server: tuple[str, Path]) -> None:
    """20 MB of headers once grew a worker to ~590 MB: now the connection is refused at 64 KB."""
    base, _ = server
    parts = urlsplit(base)
    answers = []
    for _ in range(5):
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Junk: ".encode())
            try:
                for _ in range(40):  # up to 20 MB, as long as the server reads
                    sock.sendall(b"a" * 524_288)
            except OSError:
                pass  # refused and closed mid-way: what should happen
            answers.append(sock.recv(200).decode(errors="replace"))
    assert all(answer.startswith("HTTP/1.1 431") for answer in answers), answers
    assert httpx.get(base + "/healthz").status_code == 200


def test_idle_and_slow_header_connections_are_closed(server: tuple[str, Path]) -> None:
    """Sockets that never send a whole request are answered 408 and closed after 10 s, not held for ever."""
    base, _ = server
    parts = urlsplit(base)
    idle = socket.create_connection((parts.hostname, parts.port), timeout=20)
    slow = socket.create_connection((parts.hostname, parts.port), timeout=20)
    slow.sendall(f"GET /healthz HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode())  # headers never end
    started = time.monotonic()
    try:
        answers = [idle.recv(200).decode(errors="replace"), slow.recv(200).decode(errors="replace")]
    finally:
        idle.close()
        slow.close()
    assert all(answer.startswith("HTTP/1.1 408") for answer in answers), answers
    assert 8 < time.monotonic() - started < 15


def test_beyond_the_connection_cap_callers_get_503_not_a_hang(server: tuple[str, Path]) -> None:
    """1,100 idle sockets once locked normal callers out (fd limit 1,024): a worker takes at most 900
    connections at once (uvicorn's limit_concurrency), answers 503 beyond them, and serves again as soon as
    they go."""
    base, _ = server
    parts = urlsplit(base)
    assert parts.hostname and parts.port
    idle = [socket.create_connection((parts.hostname, parts.port), timeout=10) for _ in range(905)]
    try:
        time.sleep(0.5)  # every one accepted by the worker
        started = time.monotonic()
        refused = httpx.get(base + "/healthz", timeout=10)
        assert refused.status_code == 503
        assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while httpx.get(base + "/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the worker did not serve again"
        time.sleep(0.1)


def test_oversized_headers_pipelined_behind_a_running_request_wait_for_its_response(
    server: tuple[str, Path], fhir: FhirTestServer
) -> None:
    """A pipelined request whose headers are too large arrives while the one before it is still being
    answered (its FHIR fetch is slow): that response is sent whole first, then the 431, then the close."""
    base, _ = server
    parts = urlsplit(base)
    assert parts.hostname and parts.port
    fhir.resources = builders.lbp_today()
    fhir.faults.delay_s = 0.3  # each FHIR search: the first request is still running when the second comes
    body = builders.hook_request(fhir_server=fhir.base_url)
    body["fhirAuthorization"] = builders.fhir_authorization(ACCESS_TOKEN)
    payload = json.dumps(body).encode()
    first = (
        f"POST {SERVICE} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: {_auth(base)['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    second = f"GET /healthz HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Junk: ".encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(first)
        time.sleep(0.1)  # the first is being answered
        with contextlib.suppress(OSError):
            sock.sendall(second)
            for _ in range(8):  # a head that keeps growing, 8 x 16 KB
                time.sleep(0.02)
                sock.sendall(b"a" * 16_384)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    text = received.decode(errors="replace")
    assert text.startswith("HTTP/1.1 200"), text[:200]
    assert '"indicator":"critical"' in text.replace(" ", "")
    assert text.count("HTTP/1.1 ") == 2 and "HTTP/1.1 431" in text
