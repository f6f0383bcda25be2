"""A small real FHIR R4 server for tests: read, search by patient and code, paging, and injected faults.

It listens on 127.0.0.1 on a free port in a background thread, records every request it receives (so a
test can prove a server was, or was not, contacted, and which headers it got), and can be told to be slow,
to fail, to redirect, to answer OperationOutcomes, or to send next-page links elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Faults:
    delay_s: float = 0.0
    status: int | None = None  # answer every request with this status
    redirect_to: str | None = None  # answer 302 to this URL
    operation_outcome: bool = False  # answer 200 with an OperationOutcome
    next_link_base: str | None = None  # put next-page links under this base instead
    garbage: bool = False  # answer 200 with invalid JSON
    huge_bytes: int = 0  # answer 200 with a body this large
    # resource type -> status: that type is not supported (an OperationOutcome coded not-supported), as
    # many US Core servers answer a MedicationStatement search
    unsupported: dict[str, int] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class FhirTestServer:
    resources: list[dict[str, Any]] = field(default_factory=list)
    page_size: int | None = None
    faults: Faults = field(default_factory=Faults)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/fhir"

    def start(self) -> FhirTestServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return

            def do_GET(self) -> None:
                owner._handle(self)

            def do_POST(self) -> None:
                owner._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FhirTestServer:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    # ---- request handling ---------------------------------------------------------------------------

    def _send(
        self, handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/fhir+json")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout under test)
            return

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query)
        self.requests.append(
            RecordedRequest(handler.command, parts.path, query, dict(handler.headers.items()))
        )
        faults = self.faults
        if faults.delay_s:
            time.sleep(faults.delay_s)
        if faults.redirect_to:
            self._send(handler, 302, b"", {"Location": faults.redirect_to})
            return
        if faults.status:
            self._send(handler, faults.status, _outcome("injected failure"))
            return
        if faults.operation_outcome:
            self._send(handler, 200, _outcome("injected OperationOutcome"))
            return
        if faults.garbage:
            self._send(handler, 200, b"{not json")
            return
        if faults.huge_bytes:
            self._send(handler, 200, b'{"resourceType":"Bundle","x":"' + b"a" * faults.huge_bytes + b'"}')
            return
        path = parts.path.removeprefix("/fhir").strip("/")
        segments = path.split("/")
        if segments[0] in faults.unsupported:
            status = faults.unsupported[segments[0]]
            self._send(handler, status, _outcome(f"{segments[0]} is not supported", "not-supported"))
            return
        if len(segments) == 2:
            found = next(
                (
                    r
                    for r in self.resources
                    if r["resourceType"] == segments[0] and r.get("id") == segments[1]
                ),
                None,
            )
            if found is None:
                self._send(handler, 404, _outcome(f"{path} not found"))
            else:
                self._send(handler, 200, found)
            return
        if len(segments) == 1 and segments[0]:
            self._send(handler, 200, self._search(segments[0], query))
            return
        self._send(handler, 404, _outcome("unknown path"))

    def _search(self, rtype: str, query: dict[str, list[str]]) -> dict[str, Any]:
        patient = (query.get("patient") or [None])[0]
        codes = {c for value in query.get("code", []) for c in value.split(",") if c}
        matches = [
            r
            for r in self.resources
            if r["resourceType"] == rtype and _subject(r, patient) and _coded(r, codes)
        ]
        page = int((query.get("_page") or ["0"])[0])
        size = self.page_size or max(len(matches), 1)
        chunk = matches[page * size : (page + 1) * size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": [{"resource": r} for r in chunk],
        }
        if (page + 1) * size < len(matches):
            base = self.faults.next_link_base or self.base_url
            rest = "&".join(f"{k}={v}" for k, values in query.items() if k != "_page" for v in values)
            bundle["link"] = [{"relation": "next", "url": f"{base}/{rtype}?{rest}&_page={page + 1}"}]
        return bundle


def _outcome(text: str, code: str = "processing") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


def _subject(resource: dict[str, Any], patient: str | None) -> bool:
    if patient is None:
        return True
    return resource.get("subject", {}).get("reference") in (f"Patient/{patient}", patient)


def _coded(resource: dict[str, Any], codes: set[str]) -> bool:
    if not codes:
        return True
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    return any(
        f"{c.get('system')}|{c.get('code')}" in codes or c.get("code") in codes
        for c in concept.get("coding", [])
    )
