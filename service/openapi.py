"""The OpenAPI document: request and response bodies described from the same models that parse them.

Handlers read raw bodies (for speed, see spec/stack.md), so FastAPI cannot infer their schemas; this module
adds them, so /docs is useful and schemathesis can generate requests from /openapi.json.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from cds_hooks.request import HookRequest
from cds_hooks.response import CdsResponse, Discovery, Feedback

_OUTCOME = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"const": "OperationOutcome"},
        "issue": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "severity": {"type": "string"},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                    "expression": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_REF = "#/components/schemas/{model}"


def _outcome(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}},
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def install_openapi(app: FastAPI, service_ids: list[str]) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        adapters: list[tuple[str, TypeAdapter[Any]]] = [
            ("HookRequest", TypeAdapter(HookRequest)),
            ("Feedback", TypeAdapter(Feedback)),
            ("CdsResponse", TypeAdapter(CdsResponse)),
            ("Discovery", TypeAdapter(Discovery)),
        ]
        mapping, definitions = TypeAdapter.json_schemas(
            [(name, "validation", adapter) for name, adapter in adapters], ref_template=_REF
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(definitions.get("$defs", {}))
        for name, _ in adapters:
            schema = mapping[(name, "validation")]
            if schema.get("$ref") != _REF.format(model=name):  # models are already in the definitions
                schemas[name] = schema
        schemas["OperationOutcome"] = _OUTCOME
        paths = doc["paths"]
        auth = {"401": _outcome("Missing or invalid client JWT")}
        call = paths.setdefault("/cds-services/{service_id}", {}).setdefault("post", {})
        call.update(  # a plain Starlette route (service/routes/cds.py), which FastAPI does not describe
            tags=["CDS Hooks"],
            summary="Call a CDS service",
            operationId="call_service",
            parameters=[{"name": "service_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        )
        call["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="HookRequest")}}},
        }
        call["responses"] = {
            "200": _json("CdsResponse", "Cards"),
            "400": _outcome("Malformed request, naming the field"),
            **auth,
            "404": _outcome("Unknown service"),
            "408": _outcome("The body did not arrive in time (LUMBAR_BODY_TIMEOUT_S)"),
            "412": _outcome("Required data unobtainable"),
            "413": _outcome("Body too large"),
            "503": _outcome("The replay store (database) is unavailable; retry"),
        }
        fb = paths["/cds-services/{service_id}/feedback"]["post"]
        fb["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Feedback")}}},
        }
        fb["responses"] = {
            "200": {"description": "Stored"},
            "400": _outcome("Malformed feedback"),
            **auth,
            "404": _outcome("Unknown service"),
            "408": _outcome("The body did not arrive in time (LUMBAR_BODY_TIMEOUT_S)"),
            "413": _outcome("Body too large"),
            "503": _outcome("Storage unavailable; retry"),
        }
        paths["/cds-services"]["get"]["responses"] = {"200": _json("Discovery", "The CDS services"), **auth}
        paths["/readyz"]["get"]["responses"] = {
            "200": {"description": "Ready: the rules are loaded and the database answers"},
            "503": {"description": "Not ready: the database does not answer (the body says what)"},
        }
        paths["/admin/report"]["get"]["responses"] = {
            "200": {"description": "The report (as `lumbar report --json`)"},
            "400": _outcome("since/until not an ISO 8601 date or date-time"),
            "401": _outcome("Missing or wrong admin token"),
        }
        # Who may call what (docs/security.md): the EHR's client JWT (CDS Hooks 2.0 section 7) for the CDS
        # services, the administrator's bearer token for /admin; health and metrics are open.
        doc["components"]["securitySchemes"] = {
            "clientJWT": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "The EHR's signed JWT (ES384 or RS384), as CDS Hooks 2.0 specifies",
            },
            "adminToken": {"type": "http", "scheme": "bearer", "description": "LUMBAR_ADMIN_TOKEN"},
        }
        for path, ops in paths.items():
            for operation in ops.values():
                if path.startswith("/cds-services"):
                    operation["security"] = [{"clientJWT": []}]
                elif path.startswith("/admin"):
                    operation["security"] = [{"adminToken": []}]
        for path in ("/cds-services/{service_id}", "/cds-services/{service_id}/feedback"):
            for parameter in paths[path]["post"].get("parameters", []):
                if parameter["name"] == "service_id":
                    parameter["schema"] = {"type": "string", "enum": service_ids}
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
