"""The one way the service reads a URL it was pointed at: no redirects, 200 only, a bounded body."""

from __future__ import annotations

from collections.abc import Mapping

import httpx


class FetchError(Exception):
    """The URL could not be read within the rules; the message says why, without the URL's secrets.

    Attributes:
        body: the start of an error response's body (for a caller that can read it), else empty.
    """

    def __init__(self, message: str, body: bytes = b"") -> None:
        super().__init__(message)
        self.body = body


_ERROR_BODY_BYTES = 16_384  # of an error response, kept for the caller


async def _read(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether there was more."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


async def get_bounded(
    http: httpx.AsyncClient, url: str, headers: Mapping[str, str], max_bytes: int, what: str
) -> bytes:
    """GET ``url`` and return its body; redirects are not followed and a body over ``max_bytes`` is refused.

    Raises:
        FetchError: any status but 200, a body too large, or a transport error (``what`` names the target).
    """
    try:
        async with http.stream("GET", url, headers=dict(headers), follow_redirects=False) as response:
            if response.status_code != 200:
                head, _ = await _read(response, _ERROR_BODY_BYTES)
                raise FetchError(f"{what} answered HTTP {response.status_code}", head)
            body, more = await _read(response, max_bytes)
            if more:
                raise FetchError(f"{what} answered more than {max_bytes} bytes")
    except httpx.HTTPError as exc:
        raise FetchError(f"{what} failed: {type(exc).__name__}") from None
    return body
