"""The one way the service reads a URL it was pointed at: no redirects, 200 only, a bounded body."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import httpx


class FetchError(Exception):
    """The URL could not be read within the rules; the message says why, without the URL's secrets."""


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
                codes = _issue_codes(await _head(response, _ERROR_BODY_BYTES))
                raise FetchError(f"{what} answered HTTP {response.status_code}{codes}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"{what} answered more than {max_bytes} bytes")
    except httpx.HTTPError as exc:
        raise FetchError(f"{what} failed: {type(exc).__name__}") from None
    return bytes(body)


_ERROR_BODY_BYTES = 16_384
_ISSUE_CODE = re.compile(r"[a-z][a-z-]{0,39}")


async def _head(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


def _issue_codes(body: bytes) -> str:
    """The issue codes of an error body that is an OperationOutcome, as ``" (OperationOutcome: …)"``. Only
    well-formed issue codes are repeated (they are shown to the caller and logged)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(parsed, dict) or parsed.get("resourceType") != "OperationOutcome":
        return ""
    issues = parsed.get("issue")
    codes = sorted(
        {
            issue["code"]
            for issue in (issues if isinstance(issues, list) else [])
            if isinstance(issue, dict)
            and isinstance(issue.get("code"), str)
            and _ISSUE_CODE.fullmatch(issue["code"])
        }
    )
    return f" (OperationOutcome: {', '.join(codes)})" if codes else ""
