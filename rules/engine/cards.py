"""Cards: templates built and validated once when rules load, rendered per request.

Every suggested test or referral is an action creating a FHIR R4 ServiceRequest (status draft, intent
proposal, a priority, the verified code). The ServiceRequest is built once per suggestion at load time and
validated with fhir.resources (R4B models, which R4 JSON satisfies), with a placeholder subject, reason
and reason reference of exactly the shape filled in per request; a request only copies the dict and fills
those three elements.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest as FhirServiceRequest
from pydantic import ValidationError

from cds_hooks.response import Action, Card, Coding, Link, Source, Suggestion
from rules.engine.record import Evidence, OrderFact
from rules.engine.terminology import CodeKey, Terminology

RULE_SYSTEM = "urn:lumbar-cds:rule"
OVERRIDE_SYSTEM = "urn:lumbar-cds:override-reason"
PRIORITY_RANK = {"routine": 0, "urgent": 1, "asap": 2, "stat": 3}
_UUID_NAMESPACE = uuid.UUID("1f0c6a52-6b1e-4d7a-9a39-3f6f2d9b7c11")

_OVERRIDES = {
    "urgent": (
        ("red-flag-excluded", "Red flag assessed and excluded"),
        ("already-managed", "Already being managed or referred"),
        ("finding-not-current", "Finding is old, resolved or recorded in error"),
        ("patient-declines", "Patient declines after discussion"),
    ),
    "routine": (
        ("not-relevant", "Not relevant for this patient now"),
        ("already-managed", "Already being managed"),
        ("patient-declines", "Patient declines after discussion"),
    ),
}


def override_reasons(indicator: str) -> tuple[Coding, ...]:
    """The override reasons offered on a card of this indicator (each with a display)."""
    chosen = _OVERRIDES["routine" if indicator == "info" else "urgent"]
    return tuple(Coding(system=OVERRIDE_SYSTEM, code=code, display=display) for code, display in chosen)


@dataclass(frozen=True)
class SuggestionTemplate:
    label: str
    code: CodeKey
    display: str
    priority: str
    recommended: bool
    window: timedelta
    resource: dict[str, Any]  # the validated ServiceRequest, without subject and reasons


@dataclass(frozen=True)
class CardTemplate:
    rule_id: str
    title: str
    indicator: str
    summary: str
    detail: str
    source: Source
    links: tuple[Link, ...]
    reason: tuple[CodeKey, str] | None
    suggestions: tuple[SuggestionTemplate, ...]
    selection: str


def _coding(key: CodeKey, display: str) -> dict[str, str]:
    return {"system": key[0], "code": key[1], "display": display}


def build_service_request(code: CodeKey, display: str, priority: str) -> dict[str, Any]:
    """The ServiceRequest a suggestion creates, validated with fhir.resources (ValueError if invalid)."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "priority": priority,
        "code": {"coding": [_coding(code, display)], "text": display},
    }
    exemplar = {
        **resource,
        "subject": {"reference": "Patient/example"},
        "reasonCode": [{"coding": [_coding(code, display)], "text": display}],
        "reasonReference": [{"reference": "Observation/example"}],
    }
    try:
        FhirServiceRequest.model_validate(exemplar)
    except ValidationError as exc:
        raise ValueError(
            f"the ServiceRequest for {code[1]} is not valid FHIR: {exc.errors()[0]['msg']}"
        ) from None
    return resource


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")


def escape_markdown(text: str) -> str:
    """Escape text taken from the patient record before it goes into a card's markdown."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text.replace("\n", " "))


def _evidence_line(item: Evidence) -> str:
    line = f"- {escape_markdown(item.label)}: {escape_markdown(item.value)}"
    if item.date:
        line += f", {escape_markdown(item.date[:10])}"
    if item.reference:
        line += f" ({escape_markdown(item.reference)})"
    return line


def unique_evidence(evidence: list[Evidence]) -> list[Evidence]:
    seen: set[Evidence] = set()
    out = []
    for item in evidence:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def render_card(
    template: CardTemplate,
    *,
    rules: list[str],
    evidence: list[Evidence],
    suggestions: list[SuggestionTemplate],
    already: list[tuple[SuggestionTemplate, OrderFact]],
    hook_instance: str,
    patient_reference: str,
    ruleset_version: str,
    terminology: Terminology,
) -> Card:
    """Render one card for one request: evidence in the detail, suggestions as ServiceRequest actions."""
    evidence = unique_evidence(evidence)
    detail = [template.detail.strip(), "", "**Evidence**", *(_evidence_line(e) for e in evidence)]
    if already:
        detail += ["", "**Already ordered or done, not suggested again**"]
        detail += [
            f"- {escape_markdown(s.display)}: {order.status}"
            + (f", {escape_markdown(order.date_text[:10])}" if order.date_text else "")
            + f" ({escape_markdown(order.reference)})"
            for s, order in already
        ]
    card_id = str(uuid.uuid5(_UUID_NAMESPACE, f"{hook_instance}|{template.rule_id}"))
    reasons = _reason_codes(template, evidence, terminology)
    references = [
        {"reference": e.reference}
        for e in evidence
        if e.reference and not e.reference.startswith("Patient/") and " " not in e.reference
    ]
    actions = []
    for suggestion in suggestions:
        resource = {**suggestion.resource, "subject": {"reference": patient_reference}}
        if reasons:
            resource["reasonCode"] = reasons
        if references:
            resource["reasonReference"] = references[:10]
        actions.append(
            Suggestion(
                label=suggestion.label,
                uuid=str(uuid.uuid5(_UUID_NAMESPACE, f"{card_id}|{suggestion.code[0]}|{suggestion.code[1]}")),
                is_recommended=suggestion.recommended,
                actions=(
                    Action(
                        type="create",
                        description=f"Order: {suggestion.display} ({suggestion.priority})",
                        resource=resource,
                    ),
                ),
            )
        )
    return Card(
        uuid=card_id,
        summary=template.summary,
        detail="\n".join(detail),
        indicator=template.indicator,  # type: ignore[arg-type]  # validated by the schema's Literal
        source=Source(
            label=template.source.label,
            url=template.source.url,
            topic=Coding(
                system=RULE_SYSTEM, code=template.rule_id, display=template.title, version=ruleset_version
            ),
        ),
        suggestions=tuple(actions),
        selection_behavior=template.selection if actions else None,  # type: ignore[arg-type]
        override_reasons=override_reasons(template.indicator),
        links=template.links,
        extension={"lumbar-cds": {"rules": rules, "rulesetVersion": ruleset_version}},
    )


def _reason_codes(
    template: CardTemplate, evidence: list[Evidence], terminology: Terminology
) -> list[dict[str, Any]]:
    reasons: list[dict[str, Any]] = []
    seen: set[CodeKey] = set()
    if template.reason is not None:
        key, display = template.reason
        reasons.append({"coding": [_coding(key, display)], "text": display})
        seen.add(key)
    for item in evidence:
        code = item.code
        if code is None or code in seen or code not in terminology.displays or len(reasons) >= 6:
            continue
        seen.add(code)
        shown = terminology.display(code)
        reasons.append({"coding": [_coding(code, shown)], "text": shown})
    return reasons
