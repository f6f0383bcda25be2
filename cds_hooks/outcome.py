"""FHIR OperationOutcome bodies for every rejected request, naming the field at fault."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from cds_hooks.resources import UNION_TAGS

# Tags pydantic puts into error locations for unions; they are not part of the JSON path.
_HOOK_TAGS = frozenset({"patient-view", "encounter-start", "order-select", "order-sign"})
_SKIP = UNION_TAGS | _HOOK_TAGS | {"function-after", "constrained-str"}


def outcome_issue(
    diagnostics: str, *, code: str = "invalid", severity: str = "error", expression: list[str] | None = None
) -> dict[str, Any]:
    """One issue of an OperationOutcome (``code`` from the FHIR IssueType value set)."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return issue


def operation_outcome(
    diagnostics: str, *, code: str = "invalid", severity: str = "error", expression: list[str] | None = None
) -> dict[str, Any]:
    """A one-issue OperationOutcome."""
    return outcome_of([outcome_issue(diagnostics, code=code, severity=severity, expression=expression)])


def outcome_of(issues: list[dict[str, Any]]) -> dict[str, Any]:
    """An OperationOutcome with these issues (``outcome_issue``)."""
    return {"resourceType": "OperationOutcome", "issue": issues}


def json_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a JSON path: ``context.draftOrders.entry[0].resource``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _SKIP or part.startswith("function-"):
            continue
        else:
            out += ("." if out else "") + part
    return out or "(body)"


def outcome_from_validation(error: ValidationError, *, limit: int = 20) -> dict[str, Any]:
    """An OperationOutcome with one issue per validation error (at most ``limit``), values not echoed."""
    issues: list[dict[str, Any]] = []
    for item in error.errors(include_url=False, include_input=False)[:limit]:
        path = json_path(tuple(item["loc"]))
        message = str(item["msg"])
        ctx = item.get("ctx", {})
        if item["type"] == "json_invalid":
            message = f"invalid JSON: {ctx.get('error', message)}"
        elif item["type"] in ("union_tag_not_found", "union_tag_invalid"):
            field = str(ctx.get("discriminator", "")).strip("'")
            path = f"{path}.{field}" if path != "(body)" else field
            expected = ctx.get("expected_tags", "")
            message = (
                "Field required"
                if item["type"] == "union_tag_not_found"
                else f"{ctx.get('tag')!r} is not one of {expected}"
            )
        code = "invalid" if item["type"] != "missing" else "required"
        issues.append(outcome_issue(f"{path}: {message}", code=code, expression=[path]))
    return outcome_of(issues)
