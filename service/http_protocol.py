"""uvicorn's HTTP protocol (httptools) with the limits a public endpoint needs, in the service itself (a
reverse proxy is optional): a request's headers must arrive within ``HEADER_TIMEOUT_S`` of the connection or
of the request's first byte, and a head still incomplete may not exceed ``MAX_HEADER_BYTES`` (431; the
refusal waits for a pipelined response before it and closes lingering, so the client reads both). Idle
connections are closed by uvicorn's keep-alive timeout; the number of connections per worker is capped
(``lumbar serve``'s ``limit_concurrency``), with 503 beyond.

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
LINGER_S = 1.0  # after a refusal, how long what the client still sends is read and dropped before closing
log = structlog.get_logger("lumbar.http")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True  # reading a request's start line and headers
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._deferred: tuple[int, str] | None = None  # a refusal waiting for the response in flight

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        # What bounds memory is a head that does not end: counted while one is still incomplete after a
        # read (a request that began mid-read, pipelined, is charged the whole read: an upper bound). A head
        # that arrives whole in one read (at most the transport's read size) is parsed as it is.
        if self._in_headers:
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

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deferred is not None and not self.pipeline and self.cycle_done():
            self._answer(*self._deferred)

    def cycle_done(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _refuse(self, status: int, reason: str) -> None:
        """Stop reading; answer and close at once, or, when a pipelined request before this one is still
        being answered, right after its response (never in the middle of it)."""
        self._refused = True
        log.warning("connection refused", status=status, reason=reason, header_bytes=self._header_bytes)
        if self.pipeline or not self.cycle_done():
            self._deferred = (status, reason)
            self.flow.pause_reading()
            return
        self._answer(status, reason)

    def _answer(self, status: int, reason: str) -> None:
        self._deferred = None
        if self.transport.is_closing():
            return
        body = reason.encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\n" % (status, body)
        self.transport.write(head + b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        # A lingering close: closing with unread bytes from the client would make the kernel reset the
        # connection, and the client could lose this answer (and a response sent before it). So: end our
        # side, read and drop what still comes for up to LINGER_S, then close.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.transport.resume_reading()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()
