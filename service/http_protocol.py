"""uvicorn's HTTP protocol (httptools) with the limits a public endpoint needs, in the service itself (a
reverse proxy is optional): a request's headers must arrive within ``HEADER_TIMEOUT_S`` of the connection
or of the request's first byte, and may not exceed ``MAX_HEADER_BYTES`` (431). Idle connections are closed
by uvicorn's keep-alive timeout; the number of connections per worker is capped (``lumbar serve``'s
``limit_concurrency``), with 503 beyond.

Without these, 20 connections sending 20 MB of headers grew a worker to ~590 MB, and 500 idle or slow-header
sockets were never closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 64 * 1024
log = structlog.get_logger("lumbar.http")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True  # reading a request's start line and headers
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        reading_headers = self._in_headers
        super().data_received(data)
        if reading_headers and self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(431, "Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_headers:  # a new request on a kept-alive connection
            self._in_headers, self._header_bytes = True, 0
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self._refuse(408, "Request Timeout")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer without reading further, and close (only while no request of this connection runs)."""
        self._refused = True
        log.warning("connection refused", status=status, reason=reason, header_bytes=self._header_bytes)
        if not self.transport.is_closing():
            body = reason.encode()
            head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\n" % (status, body)
            self.transport.write(
                head + b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()
