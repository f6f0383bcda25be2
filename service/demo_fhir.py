"""``lumbar demo-fhir``: an open, read-only FHIR R4 server with the bundled demo patients.

It exists so that the CDS Hooks sandbox (a browser app that needs an open FHIR server to pick a patient
from, and fills prefetch from it) and the end-to-end tests can try Lumbar CDS with realistic patients,
offline. It is a demonstration server, not a FHIR server for real data: everything is held in memory, there
is no authentication, and it refuses every write.

Data: a folder of ``*.json`` files, each a FHIR Bundle (its entries are loaded) or a single resource. The
bundled folder is ``service/demo/patients``. Every file's dates are written as if today were the Bundle's
``timestamp`` (the anchor) and are shifted at load by whole days to today, so "pain for 6 days" stays
6 days whatever the date (birth dates move too: ages stay the same). Every resource is validated with
``fhir.resources`` at load: a broken file stops the server with its name and the problem.

Interactions (base ``/fhir``): ``GET /metadata`` (CapabilityStatement); ``GET /{type}/{id}`` (read);
``GET /{type}?…`` and ``POST /{type}/_search`` (form body) search with ``_id``, ``_count`` (paging by
``_offset``, with ``next`` links), ``patient``/``subject``, ``code``, ``status``, ``clinical-status``,
``category`` and ``date`` (``eq``, ``gt``, ``ge``, ``lt``, ``le``), and for Patient ``identifier``,
``name``, ``family``, ``given``, ``gender``, ``birthdate``. An unsupported parameter is a 400 (strict
handling: silently ignoring a filter would return data a client did not ask for). Every answer carries CORS
headers for any origin, since the sandbox runs in a browser.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cds_hooks.fhirtime import FhirInstantRange, parse_fhir_datetime
from cds_hooks.outcome import operation_outcome

BUNDLED_DEMO = Path(__file__).resolve().parent / "demo" / "patients"
FHIR_JSON = "application/fhir+json; charset=utf-8"
DEFAULT_COUNT = 50
MAX_COUNT = 1000
MAX_FORM_BYTES = 1_000_000

# Where each searchable type keeps what its ``code``, ``status``, ``date`` and patient parameters mean.
_CODE = {
    "MedicationStatement": "medicationCodeableConcept",
    "MedicationRequest": "medicationCodeableConcept",
}
_DATES = {
    "Observation": ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod", "issued"),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod", "dateAsserted"),
    "MedicationRequest": ("authoredOn",),
    "Medication": (),
    "ServiceRequest": ("authoredOn",),
    "Condition": ("recordedDate",),
    "Encounter": ("period",),
}
_PAGING = {"_count", "_offset", "_format"}  # how to answer, not what to find
_COMMON = {"_id", *_PAGING}
_CLINICAL = {"patient", "subject", "code", "status", "category", "date"}
_PATIENT = {"identifier", "name", "family", "given", "gender", "birthdate"}

_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
_PREFIXED = re.compile(r"^(eq|gt|ge|lt|le)?(\d.*)$")


class DemoDataError(Exception):
    """A demo data file that cannot be served (named, with the problem)."""


class SearchError(Exception):
    """A search the server cannot answer (400)."""


def _shift_value(value: str, days: int) -> str:
    if _FULL_DATE.match(value):
        return (date.fromisoformat(value) + timedelta(days=days)).isoformat()
    if _DATE_TIME.match(value):
        moved = (datetime.fromisoformat(value.replace("Z", "+00:00")) + timedelta(days=days)).isoformat()
        return moved.replace("+00:00", "Z") if value.endswith("Z") else moved
    return value


def shift_dates(node: Any, days: int) -> Any:
    """A copy of ``node`` with every full date and date-time moved by ``days`` (identifiers untouched;
    partial dates such as ``1976`` or ``1976-05`` are left as they are)."""
    if isinstance(node, dict):
        return {k: (v if k == "identifier" else shift_dates(v, days)) for k, v in node.items()}
    if isinstance(node, list):
        return [shift_dates(v, days) for v in node]
    if isinstance(node, str) and days:
        return _shift_value(node, days)
    return node


@dataclass
class DemoStore:
    """The demo resources, by type and id, in load order."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # "Type/id" -> file name

    def add(self, resource: dict[str, Any], source: str) -> None:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str) or not rid:
            raise DemoDataError(f"{source}: every resource needs a resourceType and an id")
        key = f"{rtype}/{rid}"
        if key in self.origin:
            raise DemoDataError(f"{source}: {key} is also in {self.origin[key]}")
        _validate(resource, f"{source}: {key}")
        self.resources.setdefault(rtype, {})[rid] = resource
        self.origin[key] = source

    def count(self) -> int:
        return len(self.origin)

    def types(self) -> set[str]:
        """The resource types this server answers for: what it holds, and what the rules read."""
        return set(self.resources) | {"Patient", *_DATES}


def _validate(resource: dict[str, Any], where: str) -> None:
    from fhir.resources.R4B import get_fhir_model_class  # only here: the service itself never needs it

    try:
        model = get_fhir_model_class(resource["resourceType"])
    except KeyError:
        raise DemoDataError(f"{where}: unknown resource type") from None
    try:
        model.model_validate(resource)
    except ValueError as exc:
        first = str(exc).splitlines()[:3]
        raise DemoDataError(f"{where}: not valid FHIR: {' '.join(first)}") from None


def load_demo(directory: Path, today: date | None = None) -> DemoStore:
    """Load every ``*.json`` file of ``directory`` (sorted by name), dates shifted to ``today``."""
    if not directory.is_dir():
        raise DemoDataError(f"{directory}: not a folder")
    today = today or datetime.now(UTC).date()
    store = DemoStore()
    files = sorted(directory.glob("*.json"))
    if not files:
        raise DemoDataError(f"{directory}: no *.json files")
    for path in files:
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise DemoDataError(f"{path.name}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DemoDataError(f"{path.name}: expected a FHIR Bundle or resource")
        anchor = data.get("timestamp") or data.get("meta", {}).get("lastUpdated")
        days = 0
        if isinstance(anchor, str) and len(anchor) >= 10:
            try:
                days = (today - date.fromisoformat(anchor[:10])).days
            except ValueError:
                raise DemoDataError(f"{path.name}: timestamp {anchor!r} is not a date") from None
        if data.get("resourceType") == "Bundle":
            for entry in data.get("entry", []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict):
                    raise DemoDataError(f"{path.name}: a Bundle entry without a resource")
                store.add(shift_dates(resource, days), path.name)
        else:
            store.add(shift_dates(data, days), path.name)
    return store


# ---- search ---------------------------------------------------------------------------------------------


def _codings(concept: Any) -> list[dict[str, Any]]:
    concepts = concept if isinstance(concept, list) else [concept]
    return [
        c
        for item in concepts
        if isinstance(item, dict)
        for c in item.get("coding", [])
        if isinstance(c, dict)
    ]


def _token_match(codings: list[dict[str, Any]], token: str) -> bool:
    if "|" in token:
        system, _, code = token.partition("|")
        return any(
            ((not system and "system" not in c) or c.get("system") == system)
            and (not code or c.get("code") == code)
            for c in codings
        )
    return any(c.get("code") == token for c in codings)


def _reference_id(resource: dict[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str) and "Patient/" in ref["reference"]:
            return str(ref["reference"].rsplit("Patient/", 1)[1])
    return None


def _range_of(value: Any) -> FhirInstantRange | None:
    """A date, dateTime or Period as the span it can mean (both ends included), with the parsing the service
    uses (``cds_hooks.fhirtime``: partial dates, time zones)."""
    if isinstance(value, dict):  # a Period
        start, end = _range_of(value.get("start")), _range_of(value.get("end"))
        if start is None or end is None:
            return start or end
        return FhirInstantRange(start.start, end.end)
    if not isinstance(value, str):
        return None
    try:
        return parse_fhir_datetime(value)
    except ValueError:
        return None


def _date_match(resource: dict[str, Any], rtype: str, spec: str) -> bool:
    found = _PREFIXED.match(spec)
    when = _range_of(found.group(2)) if found else None
    if found is None or when is None:
        raise SearchError(f"date {spec!r}: expected [eq|gt|ge|lt|le] and a FHIR date or dateTime")
    prefix = found.group(1) or "eq"
    for key in _DATES.get(rtype, ()):
        span = _range_of(resource.get(key))
        if span is None:
            continue
        if (
            (prefix == "eq" and span.start >= when.start and span.end <= when.end)
            or (prefix == "gt" and span.end > when.end)
            or (prefix == "ge" and span.end >= when.start)
            or (prefix == "lt" and span.start < when.start)
            or (prefix == "le" and span.start <= when.end)
        ):
            return True
    return False


def _patient_match(resource: dict[str, Any], name: str, value: str) -> bool:
    if name == "identifier":
        return any(
            _token_match([{"system": i.get("system"), "code": i.get("value")}], value)
            for i in resource.get("identifier", [])
            if isinstance(i, dict)
        )
    if name == "gender":
        return bool(resource.get("gender") == value)
    if name == "birthdate":
        return bool(resource.get("birthDate") == value)
    parts: list[str] = []
    for human in resource.get("name", []):
        if name in ("name", "family"):
            parts.append(str(human.get("family", "")))
        if name in ("name", "given"):
            parts.extend(str(g) for g in human.get("given", []))
        if name == "name" and human.get("text"):
            parts.append(str(human["text"]))
    return any(p.lower().startswith(value.lower()) for p in parts if p)


def _matches(resource: dict[str, Any], rtype: str, name: str, value: str) -> bool:
    """One search parameter against one resource; a comma in ``value`` means any of its parts."""
    options = value.split(",")
    if name == "_id":
        return resource.get("id") in options
    if rtype == "Patient":
        return any(_patient_match(resource, name, option) for option in options)
    if name in ("patient", "subject"):
        wanted = {option.rsplit("Patient/", 1)[-1] for option in options}
        return _reference_id(resource) in wanted
    if name == "code":
        codings = _codings(resource.get(_CODE.get(rtype, "code")))
        return any(_token_match(codings, option) for option in options)
    if name == "category":
        return any(_token_match(_codings(resource.get("category")), option) for option in options)
    if name == "clinical-status":
        return any(_token_match(_codings(resource.get("clinicalStatus")), option) for option in options)
    if name == "status":
        return resource.get("status") in options
    assert name == "date"
    return all(_date_match(resource, rtype, option) for option in options)


def _allowed(rtype: str) -> set[str]:
    if rtype == "Patient":
        return _COMMON | _PATIENT
    allowed = _COMMON | _CLINICAL
    if rtype == "Condition":
        allowed = (allowed - {"status"}) | {"clinical-status"}
    return allowed


def _int(params: list[tuple[str, str]], name: str, default: int, limit: int) -> int:
    values = [v for k, v in params if k == name]
    if not values:
        return default
    try:
        number = int(values[-1])
    except ValueError:
        raise SearchError(f"{name} must be a whole number, not {values[-1]!r}") from None
    if not 0 <= number <= limit:
        raise SearchError(f"{name} must be between 0 and {limit}")
    return number


@dataclass(frozen=True)
class Page:
    """One page of a search: its resources, how many match in all, and where it starts and how long."""

    resources: list[dict[str, Any]]
    total: int
    offset: int
    count: int


def search(store: DemoStore, rtype: str, params: list[tuple[str, str]]) -> Page:
    """The matching resources of the page that ``_count`` and ``_offset`` select."""
    allowed = _allowed(rtype)
    filters: list[tuple[str, str]] = []
    for name, value in params:
        if ":" in name:
            raise SearchError(f"search modifiers are not supported ({name!r})")
        if name not in allowed:
            raise SearchError(f"unsupported search parameter {name!r} for {rtype}")
        if name == "_format" and "json" not in value:
            raise SearchError("this server answers in JSON only (_format)")
        if name not in _PAGING:
            filters.append((name, value))
    count = _int(params, "_count", DEFAULT_COUNT, MAX_COUNT)
    offset = _int(params, "_offset", 0, 10**9)
    hits = [
        resource
        for resource in store.resources.get(rtype, {}).values()
        if all(_matches(resource, rtype, name, value) for name, value in filters)
    ]
    return Page(hits[offset : offset + count], len(hits), offset, count)


# ---- HTTP -----------------------------------------------------------------------------------------------


def _fhir(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON)


def outcome(status: int, code: str, text: str) -> Response:
    return _fhir(operation_outcome(text, code=code), status)


def capability(store: DemoStore, base: str) -> dict[str, Any]:
    types = sorted(store.types())
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "kind": "instance",
        "software": {"name": "Lumbar CDS demo FHIR server"},
        "implementation": {
            "description": "Open, read-only demo patients for the CDS Hooks sandbox",
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": rtype,
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [
                            {"name": name, "type": "token" if name not in ("date", "birthdate") else "date"}
                            for name in sorted(_allowed(rtype) - _PAGING)
                        ],
                    }
                    for rtype in types
                ],
            }
        ],
    }


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def create_demo_app(store: DemoStore) -> Starlette:
    async def metadata(request: Request) -> Response:
        return _fhir(capability(store, _base(request)))

    async def read(request: Request) -> Response:
        rtype, rid = request.path_params["rtype"], request.path_params["rid"]
        if rtype not in store.types():
            return outcome(404, "not-supported", f"unknown resource type {rtype!r}")
        resource = store.resources.get(rtype, {}).get(rid)
        if resource is None:
            return outcome(404, "not-found", f"{rtype}/{rid} is not on this server")
        return _fhir(resource)

    async def search_type(request: Request) -> Response:
        rtype = request.path_params["rtype"]
        params = parse_qsl(request.url.query, keep_blank_values=True)
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_FORM_BYTES:
                return outcome(413, "too-costly", "the search form is too large")
            if body and "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
                return outcome(
                    415, "not-supported", "POST _search takes an application/x-www-form-urlencoded body"
                )
            params += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        if rtype not in store.types():
            return outcome(404, "not-supported", f"unknown resource type {rtype!r}")
        try:
            page = search(store, rtype, params)
        except SearchError as exc:
            return outcome(400, "not-supported", str(exc))
        base = _base(request)
        kept = [(k, v) for k, v in params if k not in ("_offset", "_count")]

        def link(relation: str, at: int) -> dict[str, str]:
            query = urlencode([*kept, ("_count", str(page.count)), ("_offset", str(at))])
            return {"relation": relation, "url": f"{base}/{rtype}?{query}"}

        links = [link("self", page.offset)]
        if page.count and page.offset + page.count < page.total:
            links.append(link("next", page.offset + page.count))
        return _fhir(
            {
                "resourceType": "Bundle",
                "id": str(uuid.uuid4()),
                "meta": {"lastUpdated": datetime.now(UTC).isoformat().replace("+00:00", "Z")},
                "type": "searchset",
                "total": page.total,
                "link": links,
                "entry": [
                    {"fullUrl": f"{base}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                    for r in page.resources
                ],
            }
        )

    async def read_only(request: Request) -> Response:
        return outcome(405, "not-supported", "this demo server is read-only")

    async def unknown(request: Request) -> Response:
        return outcome(404, "not-supported", f"{request.method} {request.url.path} is not supported here")

    async def root(request: Request) -> Response:
        return JSONResponse(
            {
                "fhirBase": _base(request),
                "resources": store.count(),
                "patients": len(store.resources.get("Patient", {})),
            }
        )

    routes = [
        Route("/", root, methods=["GET"]),
        Route("/fhir/metadata", metadata, methods=["GET"]),
        Route("/fhir/{rtype}/_search", search_type, methods=["POST"]),
        Route("/fhir/{rtype}/{rid}", read, methods=["GET"]),
        Route("/fhir/{rtype}/{rid}", read_only, methods=["PUT", "DELETE", "PATCH", "POST"]),
        Route("/fhir/{rtype}", search_type, methods=["GET"]),
        Route("/fhir/{rtype}", read_only, methods=["POST", "PUT", "DELETE", "PATCH"]),
        Route("/fhir/{rest:path}", unknown, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]
    cors = Middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        max_age=600,
    )
    return Starlette(routes=routes, middleware=[cors])
