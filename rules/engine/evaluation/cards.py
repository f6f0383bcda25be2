"""Cards: templates built and validated once when rules load, rendered per request.

Every suggested test or referral is an action creating a FHIR R4 ServiceRequest (status draft, intent
proposal, a priority, the verified code). Each such resource is built once per (code, priority) at load
time and validated with fhir.resources (R4B models, which R4 JSON satisfies), with a placeholder subject,
reason and reason reference of exactly the shape filled in per request; a request only copies the dict and
fills those three elements. A resource that passed is remembered by content in the process (``_VALID``), so
each distinct order is validated once per process.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError

from cds_hooks.response import Action, Card, Coding, Link, Source, Suggestion
from rules.engine.codes.terminology import CodeKey, Terminology, ValueSet
from rules.engine.compiler.context import INDICATOR_ORDER, Check
from rules.engine.record.facts import Evidence, OrderFact
from rules.engine.record.normalise import short_name

RULE_SYSTEM = "urn:lumbar-cds:rule"
OVERRIDE_SYSTEM = "urn:lumbar-cds:override-reason"
PRIORITY_RANK = {"routine": 0, "urgent": 1, "asap": 2, "stat": 3}
UUID_NAMESPACE = uuid.UUID("1f0c6a52-6b1e-4d7a-9a39-3f6f2d9b7c11")

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


@functools.cache
def override_reasons(indicator: str) -> tuple[Coding, ...]:
    """The override reasons offered on a card of this indicator (each with a display)."""
    chosen = _OVERRIDES["routine" if indicator == "info" else "urgent"]
    return tuple(Coding(system=OVERRIDE_SYSTEM, code=code, display=display) for code, display in chosen)


@functools.lru_cache(maxsize=4096)  # bounded: every reload may bring new titles or versions
def _card_source(label: str, url: str | None, rule_id: str, title: str, version: str) -> Source:
    """The card's source, naming the rule (models are immutable, so one instance serves every card)."""
    return Source(
        label=label, url=url, topic=Coding(system=RULE_SYSTEM, code=rule_id, display=title, version=version)
    )


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
    key = orjson.dumps(exemplar, option=orjson.OPT_SORT_KEYS)  # validated once per process
    if key in _VALID:
        return resource
    from fhir.resources.R4B.servicerequest import ServiceRequest as FhirServiceRequest

    try:
        FhirServiceRequest.model_validate(exemplar)
    except ValidationError as exc:
        raise ValueError(
            f"the ServiceRequest for {code[1]} is not valid FHIR: {exc.errors()[0]['msg']}"
        ) from None
    _VALID.add(key)
    return resource


_VALID: set[bytes] = set()


@dataclass(frozen=True)
class OrderTemplate:
    """A test or referral with its ServiceRequest, validated at load time."""

    code: CodeKey
    display: str
    priority: str
    resource: dict[str, Any]


@dataclass(frozen=True)
class SuggestionTemplate:
    label: str
    recommended: bool
    window: timedelta
    order: OrderTemplate | None = None
    remove_draft: ValueSet | None = None
    only_if: Check | None = None
    min_indicator: str | None = None
    order_at: tuple[
        tuple[str, OrderTemplate], ...
    ] = ()  # (indicator, order at that priority), most urgent first

    def order_for(self, indicator: str) -> OrderTemplate | None:
        """The order at the priority the card's effective ``indicator`` calls for."""
        for level, order in self.order_at:
            if INDICATOR_ORDER[indicator] >= INDICATOR_ORDER[level]:
                return order
        return self.order


@dataclass(frozen=True)
class CardTemplate:
    rule_id: str
    category: str
    title: str
    summary: str
    detail: str
    source: Source
    links: tuple[Link, ...]  # the source guideline's first (``card_links``)
    reason: tuple[CodeKey, str] | None
    suggestions: tuple[SuggestionTemplate, ...]
    selection: str
    notes: tuple[tuple[Check, str], ...] = ()


@dataclass(frozen=True)
class PlannedOrder:
    """An order a card will suggest for this request (possibly swapped by a modifier)."""

    label: str
    recommended: bool
    order: OrderTemplate
    window: timedelta


@dataclass
class CardPlan:
    """What one card shows for one request, decided by the evaluator."""

    template: CardTemplate
    indicator: str
    summary: str
    rules: list[str]
    evidence: list[Evidence]
    orders: list[PlannedOrder] = field(default_factory=list)
    removals: list[tuple[SuggestionTemplate, list[OrderFact]]] = field(default_factory=list)
    already: list[tuple[OrderTemplate, OrderFact]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def credits(self) -> tuple[str, ...]:
        """The rules the card is credited to, its topic's first: the rules whose evidence it shows (the
        owner first when it fired itself), or the owner alone."""
        return tuple(self.rules) if self.rules else (self.template.rule_id,)


# Brackets are escaped so record text cannot form a link; parentheses alone are harmless. Line breaks
# become spaces. (``str.translate``: a card's evidence lines are escaped on every call.)
_MARKDOWN_ESCAPES = str.maketrans({"\n": " ", **{c: "\\" + c for c in "\\`*_{}[]#+!|<>~"}})


def escape_markdown(text: str) -> str:
    """Escape text taken from the patient record before it goes into a card's markdown."""
    return text.translate(_MARKDOWN_ESCAPES)


def when_text(date: str, now: datetime) -> str:
    """A record's date as a clinician reads it: "3 days ago (2026-11-30)"; a partial date ("2026-11") or
    one after ``now`` as written."""
    try:
        day = datetime.fromisoformat(date[:10]).date() if len(date) >= 10 else None
    except ValueError:
        day = None
    if day is None or day > now.date():
        return date[:10]
    days = (now.date() - day).days
    if days == 0:
        ago = "today"
    elif days == 1:
        ago = "yesterday"
    elif days < 14:
        ago = f"{days} days ago"
    elif days < 70:
        ago = f"{days // 7} weeks ago"
    elif days < 730:
        ago = f"{days * 12 // 365} months ago"
    else:
        ago = f"{days // 365} years ago"
    return f"{ago} ({day.isoformat()})"


EVIDENCE_PER_KIND = 3  # the latest records of one kind shown; the others summarised in one line
EVIDENCE_LINES = 40  # at most this many evidence lines on a card, so it stays within CDS Hooks' limits
_TEXT_LIMIT = 200  # characters of a record's own label or value shown


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 1] + "…"


def evidence_lines(evidence: list[Evidence], now: datetime) -> list[str]:
    """The evidence as lines, every kind of it shown however many records there are: of each kind (label)
    the latest ``EVIDENCE_PER_KIND`` records, then "and 1,995 more ..., the earliest ..."; at most
    ``EVIDENCE_LINES`` lines in all (2,000 matching Observations would otherwise exceed the card's limit)."""
    kinds: dict[str, list[Evidence]] = {}
    for item in evidence:
        kinds.setdefault(item.named, []).append(item)
    lines: list[str] = []
    for label, items in kinds.items():
        if len(items) <= EVIDENCE_PER_KIND:
            lines += [_evidence_line(item, now) for item in items]
            continue
        latest = sorted(items, key=lambda item: item.date or "", reverse=True)
        lines += [_evidence_line(item, now) for item in latest[:EVIDENCE_PER_KIND]]
        dated = [item.date for item in latest[EVIDENCE_PER_KIND:] if item.date]
        earliest = f", the earliest {when_text(min(dated), now)}" if dated else ""
        more = f"{len(items) - EVIDENCE_PER_KIND:,} more {_clip(label)} records{earliest}"
        lines.append(f"- and {escape_markdown(more)}")
    if len(lines) > EVIDENCE_LINES:
        hidden = len(lines) - (EVIDENCE_LINES - 1)
        lines = [*lines[: EVIDENCE_LINES - 1], f"- and {hidden:,} more lines of evidence in the record"]
    return lines


def _evidence_line(item: Evidence, now: datetime) -> str:
    line = f"- {escape_markdown(_clip(item.named))}: {escape_markdown(_clip(item.value))}"
    if item.date:
        line += f", {escape_markdown(when_text(item.date, now))}"
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
    plan: CardPlan,
    *,
    now: datetime,
    hook_instance: str,
    patient_reference: str,
    ruleset_version: str,
    terminology: Terminology,
) -> Card:
    """Render one card: evidence in the detail, orders as ServiceRequest actions, removals as deletes."""
    template = plan.template
    evidence = unique_evidence(plan.evidence)
    detail = [template.detail.strip(), *(f"\n{note.strip()}" for note in plan.notes), "", "**Evidence**"]
    detail += evidence_lines(evidence, now)
    if plan.already:
        detail += ["", "**Already ordered or done, not suggested again**"]
        detail += [
            f"- {escape_markdown(short_name(o.display))}: {found.status}"
            + (f", {escape_markdown(when_text(found.date_text, now))}" if found.date_text else "")
            + f" ({escape_markdown(found.reference)})"
            for o, found in plan.already
        ]
    card_id = stable_uuid(hook_instance, template.rule_id)
    reasons = _reason_codes(template, evidence, terminology)
    references = [
        {"reference": e.reference}
        for e in evidence
        if e.reference and not e.reference.startswith("Patient/") and " " not in e.reference
    ]
    suggestions = []
    for planned in plan.orders:
        order = planned.order
        resource = {**order.resource, "subject": {"reference": patient_reference}}
        if reasons:
            resource["reasonCode"] = reasons
        if references:
            resource["reasonReference"] = references[:10]
        action = Action(
            type="create", description=f"Order: {order.display} ({order.priority})", resource=resource
        )
        suggestions.append(
            Suggestion(
                label=planned.label,
                uuid=stable_uuid(card_id, order.code[0], order.code[1]),
                is_recommended=planned.recommended,
                actions=(action,),
            )
        )
    for spec, drafts in plan.removals:
        actions = tuple(
            Action(type="delete", description=f"Remove the draft order: {d.label}", resource_id=d.reference)
            for d in drafts
        )
        suggestions.append(
            Suggestion(
                label=spec.label,
                uuid=stable_uuid(card_id, "remove", *[d.reference for d in drafts]),
                is_recommended=spec.recommended,
                actions=actions,
            )
        )
    return Card(
        uuid=card_id,
        summary=plan.summary,
        detail="\n".join(detail),
        indicator=plan.indicator,  # type: ignore[arg-type]  # an IndicatorName, validated at load
        # The topic names a rule that fired: the owner, or the first rule whose evidence the owner's card
        # shows (a merged cauda equina card from saddle numbness alone names the saddle rule); all of them
        # are in the extension, and the audit trail credits each (issue 15).
        source=_card_source(
            template.source.label,
            template.source.url,
            plan.credits[0],
            template.title,
            ruleset_version,
        ),
        suggestions=tuple(suggestions),
        selection_behavior=template.selection if suggestions else None,  # type: ignore[arg-type]
        override_reasons=override_reasons(plan.indicator),
        links=template.links,
        extension={"lumbar-cds": {"rules": plan.rules, "rulesetVersion": ruleset_version}},
    )


def card_links(source: Source, links: tuple[Link, ...]) -> tuple[Link, ...]:
    """A card's guideline links, its source guideline first (every card links to its guideline)."""
    if source.url is None or any(link.url == source.url for link in links):
        return links
    return (Link(label=source.label, url=source.url, type="absolute"), *links)


def stable_uuid(*parts: str) -> str:
    """``str(uuid.uuid5(UUID_NAMESPACE, "|".join(parts)))``, without building a UUID object (a card has
    several: the profile put uuid5 at 5% of a hook call)."""
    return uuid5_text(UUID_NAMESPACE, "|".join(parts))


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """RFC 9562 version 5 UUID text: SHA-1 of namespace and name, version and variant bits set."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
        text = f"{shown} ({item.site})" if item.site else shown  # the site is part of the finding
        reasons.append({"coding": [_coding(code, shown)], "text": text})
    return reasons
