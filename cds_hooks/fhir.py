"""The one FHIR client: fills the prefetch keys a client left unsatisfied, from the client's FHIR server.

Only servers on the allow-list are contacted; the bearer token from ``fhirAuthorization`` is sent to that
server for that call and kept nowhere else. Keys are fetched in parallel within one time budget; paginated
search results are followed through ``link[next]`` up to a page limit, and a next link that leaves the
server's base URL is refused. Redirects are not followed. ``fill_prefetch`` fills each key on its own and
reports the keys it could not fill with the reason (the service decides what a call can do without them).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import TypeAdapter, ValidationError

from cds_hooks.errors import PrefetchTemplateError, PrefetchUnavailable
from cds_hooks.http import FetchError, get_bounded
from cds_hooks.prefetch import KeyState, assess_prefetch, render_prefetch
from cds_hooks.request import HookRequest
from cds_hooks.resources import Bundle, BundleEntry, OperationOutcome, Resource

RESOURCE: TypeAdapter[Resource] = TypeAdapter(Resource)


def _split(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port, parts.path.rstrip("/")


def _under(url: str, base: str) -> bool:
    """True when ``url`` lies under ``base``: same scheme, host and port, and a path prefix on a segment."""
    scheme, host, port, path = _split(url)
    b_scheme, b_host, b_port, b_path = _split(base)
    if (scheme, host, port) != (b_scheme, b_host, b_port):
        return False
    return path == b_path or path.startswith(b_path + "/")


class FhirAllowlist:
    """Base-URL prefixes of the FHIR servers the service may call; ``*`` permits any (development only)."""

    def __init__(self, entries: Iterable[str]) -> None:
        cleaned = [entry.strip().rstrip("/") for entry in entries if entry.strip()]
        self.any = "*" in cleaned
        self.prefixes = tuple(entry for entry in cleaned if entry != "*")

    def permits(self, url: str) -> bool:
        """Whether the service may send requests to ``url``."""
        return self.any or any(_under(url, prefix) for prefix in self.prefixes)


def _context_tokens(request: HookRequest) -> dict[str, Any]:
    """The context's root-level primitive fields, camelCase, as prefetch tokens may use them."""
    wire = request.context.model_dump(by_alias=True, exclude={"draft_orders", "selections"})
    return {k: v for k, v in wire.items() if isinstance(v, str | int | float)}


class FhirClient:
    """Fetches what prefetch lacks. One instance per application; it owns no connection pool itself.

    Args:
        http: the application's ``httpx.AsyncClient`` (tests pass one with a mock or real transport).
        allowlist: servers that may be contacted.
        timeout_s: total time budget for all the fetches of one hook call.
        max_pages: how many pages of one search result are followed, the first included.
        max_response_bytes: the largest response body accepted from the FHIR server.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        allowlist: FhirAllowlist,
        *,
        timeout_s: float,
        max_pages: int = 20,
        max_response_bytes: int = 20_000_000,
    ) -> None:
        self._http = http
        self._allowlist = allowlist
        self._timeout_s = timeout_s
        self._max_pages = max_pages
        self._max_bytes = max_response_bytes

    async def fill_prefetch(
        self, request: HookRequest, templates: Mapping[str, str]
    ) -> tuple[dict[str, Resource | None], dict[str, str]]:
        """Fill what the client left unsatisfied, each key on its own: the prefetch with every key that
        could be had, and the keys that could not (key -> why, safe to show).

        One key failing (a search answered 404 or not-supported, too many pages, a bad next link) leaves the
        others; at the end of the time budget, the keys not yet filled are unavailable. When nothing is
        missing, the request's own ``prefetch`` object is returned unchanged.
        """
        states = assess_prefetch(list(templates), request.prefetch)
        todo = {k: s for k, s in states.items() if s in (KeyState.MISSING, KeyState.PAGINATED)}
        if not todo:
            return request.prefetch, {}
        prefetch: dict[str, Resource | None] = dict(request.prefetch)
        server = request.fhir_server
        why: str | None = None
        if server is None:
            why = "not in prefetch, and the request names no fhirServer to fetch it from"
        elif not self._allowlist.permits(server):
            why = f"the FHIR server {server} is not in LUMBAR_FHIR_ALLOWLIST"
        if why is not None or server is None:  # (why is set whenever there is no server)
            for key in todo:
                prefetch.pop(key, None)  # (an OperationOutcome the client sent in its place)
            return prefetch, dict.fromkeys(todo, why or "")
        headers = {"Accept": "application/fhir+json"}
        if request.fhir_authorization is not None:
            token = request.fhir_authorization.access_token.get_secret_value()
            headers["Authorization"] = f"Bearer {token}"
        tokens = _context_tokens(request)
        tasks = {
            key: asyncio.ensure_future(
                self._fill(key, state, server, templates[key], prefetch.get(key), tokens, headers)
            )
            for key, state in todo.items()
        }
        _, pending = await asyncio.wait(tasks.values(), timeout=self._timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        unavailable: dict[str, str] = {}
        for key, task in tasks.items():
            if task in pending:
                unavailable[key] = f"the FHIR server did not answer within {self._timeout_s:g} s"
            elif isinstance(error := task.exception(), PrefetchUnavailable):
                unavailable[key] = error.reason
            elif error is not None:
                raise error  # a bug, not the server's answer
            else:
                prefetch[key] = task.result()
                continue
            prefetch.pop(key, None)
        return prefetch, unavailable

    async def _fill(
        self,
        key: str,
        state: KeyState,
        server: str,
        template: str,
        given: Resource | None,
        tokens: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> Resource | None:
        if state is KeyState.PAGINATED and isinstance(given, Bundle):
            result: Resource = given
        else:
            try:
                query = render_prefetch(template, tokens)
            except PrefetchTemplateError as exc:
                raise PrefetchUnavailable(key, str(exc)) from None
            result = await self._get(key, f"{server}/{query}", headers)
        if not isinstance(result, Bundle):
            return result
        return await self._follow_pages(key, server, result, headers)

    async def _follow_pages(
        self, key: str, server: str, bundle: Bundle, headers: Mapping[str, str]
    ) -> Bundle:
        entries: list[BundleEntry] = list(bundle.entry)
        pages = 1
        while (url := bundle.next_url()) is not None:
            pages += 1
            if pages > self._max_pages:
                raise PrefetchUnavailable(key, f"the search result has more than {self._max_pages} pages")
            if not _under(url, server):
                raise PrefetchUnavailable(key, "a next-page link leaves the FHIR server's base URL")
            page = await self._get(key, url, headers)
            if not isinstance(page, Bundle):
                raise PrefetchUnavailable(key, "a next-page link did not return a Bundle")
            entries.extend(page.entry)
            bundle = page
        return Bundle(resourceType="Bundle", type="searchset", entry=tuple(entries))

    async def _get(self, key: str, url: str, headers: Mapping[str, str]) -> Resource:
        what = urlsplit(url).path.rsplit("/", 1)[-1] or "resource"
        try:
            body = await get_bounded(self._http, url, headers, self._max_bytes, f"GET {what}")
        except FetchError as exc:
            codes = _issue_codes(exc.body)
            why = f"{exc} (OperationOutcome: {codes})" if codes else str(exc)
            raise PrefetchUnavailable(key, why) from None
        try:
            resource = RESOURCE.validate_json(body)
        except ValidationError:
            raise PrefetchUnavailable(key, f"GET {what} did not return valid FHIR JSON") from None
        if isinstance(resource, OperationOutcome):
            codes = _codes(resource) or "no issue code"
            raise PrefetchUnavailable(key, f"GET {what} answered with an OperationOutcome ({codes})")
        return resource


_ISSUE_CODE = re.compile(r"[a-z][a-z-]{0,39}")  # an IssueType code; anything else is not repeated


def _issue_codes(body: bytes) -> str:
    """The issue codes of a body that is an OperationOutcome ("not-supported, processing"), else "".
    They are shown to the caller and logged, so only well-formed codes are repeated."""
    try:
        resource = RESOURCE.validate_json(body)
    except ValidationError:
        return ""
    return _codes(resource) if isinstance(resource, OperationOutcome) else ""


def _codes(outcome: OperationOutcome) -> str:
    return ", ".join(sorted({i.code for i in outcome.issue if i.code and _ISSUE_CODE.fullmatch(i.code)}))
