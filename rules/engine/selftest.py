"""Running the test cases embedded in rule files.

Each case's compact records are expanded into real FHIR R4 JSON, wrapped in a real CDS Hooks request,
parsed by the same code as a live request, and evaluated at the case's pinned ``now``. The expectation
is partial: only what it names is checked. A case marked ``xfail`` must fail; if it passes, that is
reported as a failure too, so a fixed gap is noticed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import orjson

from cds_hooks.fhirtime import parse_fhir_datetime
from cds_hooks.request import HookRequest, parse_hook_request
from cds_hooks.response import Action, Card
from rules.engine.codes.terminology import Terminology
from rules.engine.compiler.context import parse_duration
from rules.engine.compiler.ruleset import CompiledRule, RuleSet
from rules.engine.evaluation.evaluate import Evaluation, Verdict, evaluate
from rules.engine.evaluation.pama import RATING_EXTENSION
from rules.engine.model.schema import RecordSpec, TestCase

UCUM = "http://unitsofmeasure.org"
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_SIDE = {"left": "7771000", "right": "24028007", "bilateral": "51440002"}
_SIDE_DISPLAY = {"left": "Left", "right": "Right", "bilateral": "Right and left"}
# Compact resource types beyond Observation and Condition: id prefix, default status, code element, and
# the prefix of their time element (effective[x], performed[x]).
_SIMPLE = {
    "MedicationStatement": ("med", "active", "medicationCodeableConcept", "effective"),
    "MedicationRequest": ("medrq", "active", "medicationCodeableConcept", "authored"),
    "ServiceRequest": ("sr", "active", "code", "authored"),
    "DiagnosticReport": ("dr", "final", "code", "effective"),
    "Procedure": ("proc", "completed", "code", "performed"),
}
_NS = uuid.UUID("6b1f3c2e-2f45-4c8e-9d0b-1c3a5e7f9a21")


@dataclass
class CaseResult:
    """The outcome of one embedded test case."""

    rule_id: str
    name: str
    path: str
    line: int
    failures: list[str] = field(default_factory=list)
    xfail: str | None = None
    evaluation: Evaluation | None = None

    @property
    def ok(self) -> bool:
        """Passed, or failed as its ``xfail`` says it should."""
        return bool(self.failures) if self.xfail else not self.failures

    def one_line(self) -> str:
        """The case on one line, ``path:line: FAIL rule :: name: why`` (the log, /readyz)."""
        why = "; ".join(self.failures) or f"unexpectedly passed (xfail: {self.xfail})"
        return f"{self.path}:{self.line}: FAIL {self.rule_id} :: {self.name}: {why}"

    def report(self) -> str:
        head = f"{self.path}:{self.line}: {self.rule_id} :: {self.name}"
        if self.xfail and not self.failures:
            return f"{head}\n  unexpectedly passed (xfail: {self.xfail})"
        return "\n".join([head, *(f"  {line}" for line in self.failures)])


class _Builder:
    def __init__(self, case: TestCase, terminology: Terminology) -> None:
        self.case = case
        self.terminology = terminology
        self.now = case_now(case)
        self.patient_id = case.patient.id if case.patient else "test-patient"
        self.counter = 0

    def time(self, text: str) -> str:
        if text == "now":
            return _iso(self.now)
        if text.startswith("-"):
            return _iso(self.now - parse_duration(text[1:]))
        return text

    def concept(self, ref: str, text: str | None = None) -> dict[str, Any]:
        system, code = self.terminology.split(ref)
        coding: dict[str, Any] = {"system": system, "code": code}
        display = self.terminology.displays.get((system, code)) if system else None
        if display:
            coding["display"] = display
        concept: dict[str, Any] = {"coding": [coding]}
        if text:
            concept["text"] = text
        return concept

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def patient(self) -> dict[str, Any] | None:
        spec = self.case.patient
        if spec is None:
            return None
        resource: dict[str, Any] = {"resourceType": "Patient", "id": spec.id}
        if spec.gender:
            resource["gender"] = spec.gender
        if spec.birth_date:
            resource["birthDate"] = spec.birth_date
        elif spec.age is not None:
            day = min(self.now.day, 28) if self.now.month == 2 else self.now.day
            resource["birthDate"] = date(self.now.year - spec.age, self.now.month, day).isoformat()
        return resource

    def resource(self, spec: RecordSpec) -> dict[str, Any]:
        kind = spec.kind()
        if kind is None:
            assert spec.fhir is not None  # the schema guarantees one of the two
            return dict(spec.fhir)
        resource_type, ref = kind
        subject = {"reference": spec.subject or f"Patient/{self.patient_id}"}
        if resource_type == "Observation":
            return self._observation(spec, ref, subject)
        if resource_type == "Condition":
            return self._condition(spec, ref, subject)
        prefix, status, code_field, when = _SIMPLE[resource_type]
        out: dict[str, Any] = {
            "resourceType": resource_type,
            "id": spec.id or self.next_id(prefix),
            "status": spec.status or status,
            "subject": subject,
            code_field: self.concept(ref, spec.text),
        }
        if resource_type == "ServiceRequest":
            out["intent"] = "order"
            if spec.date:
                out["authoredOn"] = self.time(spec.date)
        elif resource_type == "MedicationRequest":  # US Core: authoredOn, and the dosage's bounds
            out["intent"] = "order"
            if spec.date:
                out["authoredOn"] = self.time(spec.date)
            if spec.period is not None:
                bounds = {"start": self.time(spec.period[0])}
                if spec.period[1]:
                    bounds["end"] = self.time(spec.period[1])
                out["authoredOn"] = bounds["start"]
                out["dosageInstruction"] = [{"timing": {"repeat": {"boundsPeriod": bounds}}}]
        else:
            self._when(out, spec, when)
        return out

    def _when(self, out: dict[str, Any], spec: RecordSpec, prefix: str) -> None:
        if spec.period is not None:
            period = {"start": self.time(spec.period[0])}
            if spec.period[1]:
                period["end"] = self.time(spec.period[1])
            out[f"{prefix}Period"] = period
        elif spec.date:
            out[f"{prefix}DateTime"] = self.time(spec.date)

    def _observation(self, spec: RecordSpec, ref: str, subject: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resourceType": "Observation",
            "id": spec.id or self.next_id("obs"),
            "status": spec.status or "final",
            "code": self.concept(ref, spec.text),
            "subject": subject,
        }
        self._when(out, spec, "effective")
        if isinstance(spec.value, bool):
            out["valueBoolean"] = spec.value
        elif isinstance(spec.value, str):
            out["valueCodeableConcept"] = self.concept(spec.value)
        elif spec.value is not None:
            number, unit = spec.value
            out["valueQuantity"] = {"value": number, "unit": unit, "system": UCUM, "code": unit}
        if spec.range is not None:
            range_unit = spec.value[1] if isinstance(spec.value, tuple) else None
            rng: dict[str, Any] = {}
            for key, bound in zip(("low", "high"), spec.range, strict=True):
                if bound is not None:
                    units = {"unit": range_unit, "system": UCUM, "code": range_unit} if range_unit else {}
                    rng[key] = {"value": bound, **units}
            out["referenceRange"] = [rng]
        if spec.body_site:
            out["bodySite"] = {"coding": [c for ref in spec.body_site for c in self.concept(ref)["coding"]]}
        if spec.laterality:
            out["component"] = [
                {
                    "code": self.concept("snomed:272741003"),
                    "valueCodeableConcept": self.concept(f"snomed:{_SIDE[spec.laterality]}"),
                }
            ]
        if spec.interpretation:
            out["interpretation"] = [self.concept(ref) for ref in spec.interpretation]
        if spec.absent_reason:
            out["dataAbsentReason"] = {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}
                ]
            }
        return out

    def _condition(self, spec: RecordSpec, ref: str, subject: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resourceType": "Condition",
            "id": spec.id or self.next_id("cond"),
            "clinicalStatus": {"coding": [{"system": _CLINICAL, "code": spec.clinical or "active"}]},
            "verificationStatus": {
                "coding": [{"system": _VERIFICATION, "code": spec.verification or "confirmed"}]
            },
            "code": self.concept(ref, spec.text),
            "subject": subject,
        }
        if spec.date:
            out["onsetDateTime"] = self.time(spec.date)
        elif spec.period is not None:
            out["onsetPeriod"] = {"start": self.time(spec.period[0])}
        if spec.recorded:
            out["recordedDate"] = self.time(spec.recorded)
        if spec.abatement:
            out["abatementDateTime"] = self.time(spec.abatement)
        sites = [c for ref in spec.body_site for c in self.concept(ref)["coding"]]
        if spec.laterality:
            sites.append(
                {
                    "system": "http://snomed.info/sct",
                    "code": _SIDE[spec.laterality],
                    "display": _SIDE_DISPLAY[spec.laterality],
                }
            )
        if sites:
            out["bodySite"] = [{"coding": sites}]
        return out


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
    }


_KEYS = {
    "Observation": "observations",
    "Condition": "conditions",
    "MedicationStatement": "medications",
    "MedicationRequest": "medicationrequests",
    "ServiceRequest": "servicerequests",
    "DiagnosticReport": "diagnosticreports",
    "Procedure": "procedures",
}


def build_request(case: TestCase, rule_id: str, ruleset: RuleSet) -> dict[str, Any]:
    """The CDS Hooks request (wire JSON) a case describes, with every prefetch key the hook declares."""
    builder = _Builder(case, ruleset.terminology)
    grouped: dict[str, list[dict[str, Any]]] = {
        key: [] for key in ruleset.prefetch.get(case.hook, {}) if key != "patient"
    }
    for spec in case.records:
        resource = builder.resource(spec)
        grouped.setdefault(_KEYS.get(resource.get("resourceType", ""), "other"), []).append(resource)
    prefetch: dict[str, Any] = {"patient": builder.patient()}
    prefetch.update({key: _bundle(items) for key, items in grouped.items()})
    context: dict[str, Any] = {"userId": "Practitioner/test-clinician", "patientId": builder.patient_id}
    if case.hook == "encounter-start":
        context["encounterId"] = "test-encounter"
    if case.hook in ("order-select", "order-sign"):
        drafts = []
        for spec in case.draft_orders:
            resource = builder.resource(spec)
            resource["status"] = "draft"
            drafts.append(resource)
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in drafts],
        }
        if case.hook == "order-select":
            context["selections"] = [f"{r['resourceType']}/{r['id']}" for r in drafts]
    return {
        "hook": case.hook,
        "hookInstance": str(uuid.uuid5(_NS, f"{rule_id}|{case.name}")),
        "context": context,
        "prefetch": prefetch,
    }


def _card_for(evaluation: Evaluation, rule_id: str) -> Card | None:
    verdict = evaluation.verdicts.get(rule_id)
    if verdict is None or verdict.card is None:  # (only a fired rule's evidence is on a card)
        return None
    return next((card for credited, card in evaluation.credited() if credited == rule_id), None)


def _suggested(card: Card) -> dict[str, str]:
    """``alias:code`` is unknown here, so orders are keyed by 'system|code' → priority."""
    out: dict[str, str] = {}
    for suggestion in card.suggestions:
        for action in suggestion.actions:
            resource = action.resource or {}
            for coding in resource.get("code", {}).get("coding", []):
                out[f"{coding['system']}|{coding['code']}"] = resource.get("priority", "")
    return out


@dataclass(frozen=True)
class Observed:
    """What one case produced, as the expectation checkers see it."""

    evaluation: Evaluation
    verdict: Verdict
    card: Card | None  # the card that carries the rule's evidence
    terminology: Terminology

    @property
    def fired(self) -> bool:
        return self.verdict.status == "fired"

    def no_card(self) -> list[str]:
        """Why a card-level expectation cannot be met (the rule has no card in the response)."""
        if self.fired:
            return ["the rule fired but no card carries its evidence"]
        return ["cannot check the card: the rule did not fire"]


def _check_fired(want: bool, got: Observed) -> list[str]:
    if got.fired == want:
        return []
    why: str = got.verdict.status
    if got.verdict.suppressed_by:
        why += f" by {', '.join(got.verdict.suppressed_by)}"
    if got.verdict.error:
        why += f" ({got.verdict.error})"
    return [f"expected fired: {str(want).lower()}, got: {why}"]


def _check_indicator(want: str, got: Observed) -> list[str]:
    if got.card is None:
        return got.no_card()
    return [] if got.card.indicator == want else [f"expected indicator: {want}, got: {got.card.indicator}"]


def _check_suggestions(want: list[str], got: Observed) -> list[str]:
    if got.card is None:
        return got.no_card()
    suggested = _suggested(got.card)
    failures = []
    for item in want:
        ref, _, priority = item.partition(" ")
        system, code = got.terminology.split(ref)
        found = suggested.get(f"{system}|{code}")
        if found is None:
            failures.append(f"expected suggestion {ref}, got: {sorted(suggested) or 'none'}")
        elif priority and found != priority:
            failures.append(f"expected suggestion {ref} at {priority}, got: {found}")
    return failures


def _check_absent_suggestions(want: list[str], got: Observed) -> list[str]:
    everywhere = {key for card in got.evaluation.cards for key in _suggested(card)}
    failures = []
    for ref in want:
        system, code = got.terminology.split(ref)
        if f"{system}|{code}" in everywhere:
            failures.append(f"expected no suggestion of {ref} on any card, but it is suggested")
    return failures


def _check_suppressed_by(want: str, got: Observed) -> list[str]:
    if want in got.verdict.suppressed_by:
        return []
    by = f" by {', '.join(got.verdict.suppressed_by)}" if got.verdict.suppressed_by else ""
    return [f"expected suppressed_by: {want}, got: {got.verdict.status}{by}"]


def _check_rating(want: str, got: Observed) -> list[str]:
    ratings = sorted({r for action in got.evaluation.system_actions for r in _ratings_of(action)})
    if ratings == ([] if want == "none" else [want]):
        return []
    return [f"expected rating: {want}, got: {', '.join(ratings) or 'none'}"]


def _check_removes_draft(want: bool, got: Observed) -> list[str]:
    deletes = any(
        action.type == "delete"
        for card in got.evaluation.cards
        for suggestion in card.suggestions
        for action in suggestion.actions
    )
    if deletes == want:
        return []
    return [f"expected removes_draft: {str(want).lower()}, got: {str(deletes).lower()}"]


def _check_summary_contains(want: str, got: Observed) -> list[str]:
    if got.card is None:
        return got.no_card()
    if want in got.card.summary:
        return []
    return [f"expected summary containing {want!r}, got: {got.card.summary!r}"]


def _check_detail_contains(want: list[str], got: Observed) -> list[str]:
    if got.card is None:
        return got.no_card()
    return [f"expected detail containing {text!r}" for text in want if text not in (got.card.detail or "")]


def _check_cards(want: int, got: Observed) -> list[str]:
    cards = got.evaluation.cards
    if len(cards) == want:
        return []
    topics = ", ".join(c.source.topic.code if c.source.topic else "?" for c in cards)
    return [f"expected {want} card(s) in the response, got: {len(cards)} ({topics})"]


Checker = Callable[[Any, Observed], list[str]]

EXPECTATION_CHECKS: dict[str, Checker] = {
    "fired": _check_fired,
    "indicator": _check_indicator,
    "suggestions": _check_suggestions,
    "absent_suggestions": _check_absent_suggestions,
    "suppressed_by": _check_suppressed_by,
    "rating": _check_rating,
    "removes_draft": _check_removes_draft,
    "summary_contains": _check_summary_contains,
    "detail_contains": _check_detail_contains,
    "cards": _check_cards,
}
"""Each field of :class:`~rules.engine.model.schema.Expectation` and its checker: one entry per field (a test
holds the two together), so nothing a case may expect goes unchecked."""


def check_expectations(
    case: TestCase, rule_id: str, evaluation: Evaluation, terminology: Terminology
) -> list[str]:
    """Every way ``evaluation`` differs from the case's expectation, as readable lines. A field left out
    (``None`` or an empty list) is not checked; every other is, by its entry in ``EXPECTATION_CHECKS``."""
    observed = Observed(evaluation, evaluation.verdicts[rule_id], _card_for(evaluation, rule_id), terminology)
    failures: list[str] = []
    for name, check in EXPECTATION_CHECKS.items():
        want = getattr(case.expect, name)
        if want is None or want == []:
            continue
        for line in check(want, observed):
            if line not in failures:  # (several card-level fields share one "no card" line)
                failures.append(line)
    return failures


def case_now(case: TestCase) -> datetime:
    """The case's pinned evaluation time (its own or the file's ``test_defaults``, set by the loader)."""
    if case.now is None:
        raise ValueError(f"test case {case.name!r} has no 'now'")
    return parse_fhir_datetime(case.now).start


def case_request(case: TestCase, rule_id: str, ruleset: RuleSet) -> tuple[HookRequest, datetime]:
    """An embedded case as the engine sees it: the parsed hook request and the case's ``now``."""
    request = parse_hook_request(orjson.dumps(build_request(case, rule_id, ruleset)))
    if case.unavailable:  # as the service passes on what the EHR could not provide (key: the type searched)
        request = request.with_prefetch(
            request.prefetch, {str(k): why for k, why in case.unavailable.items()}
        )
    return request, case_now(case)


def run_case(ruleset: RuleSet, rule: CompiledRule, index: int) -> CaseResult:
    """Run one embedded case of ``rule``."""
    case = rule.tests[index]
    line = rule.document.position(("tests", index))[0]
    result = CaseResult(rule.id, case.name, rule.path, line, xfail=case.xfail)
    try:
        request, now = case_request(case, rule.id, ruleset)
        result.evaluation = evaluate(ruleset, request, now)
    except Exception as exc:  # noqa: BLE001  # a broken case is a failure to report, not a crash
        result.failures.append(f"the case could not run: {type(exc).__name__}: {exc}")
        return result
    result.failures = check_expectations(case, rule.id, result.evaluation, ruleset.terminology)
    return result


def run_tests(ruleset: RuleSet, rule_ids: set[str] | None = None) -> list[CaseResult]:
    """Run every embedded case, or only those of ``rule_ids``."""
    return [
        run_case(ruleset, rule, index)
        for rule in ruleset.rules
        if rule_ids is None or rule.id in rule_ids
        for index in range(len(rule.tests))
    ]


_FAILING: dict[str, tuple[str, ...]] = {}


def failing_cases(ruleset: RuleSet) -> tuple[str, ...]:
    """The embedded cases that fail, one line each (``CaseResult.one_line``); empty when all pass. Run
    once per rule-set version in a process (the version is a hash of every file's content)."""
    if ruleset.version not in _FAILING:
        if len(_FAILING) >= 16:  # a long-lived process sees many versions: keep the recent ones
            del _FAILING[next(iter(_FAILING))]
        _FAILING[ruleset.version] = tuple(result.one_line() for result in run_tests(ruleset) if not result.ok)
    return _FAILING[ruleset.version]


def _ratings_of(action: Action) -> list[str]:
    """The appropriateness ratings (Argonaut PAMA) an update action attaches to a draft order."""
    extensions = (action.resource or {}).get("extension", []) if isinstance(action.resource, dict) else []
    return [
        coding.get("code", "")
        for ext in extensions
        if isinstance(ext, dict) and ext.get("url") == RATING_EXTENSION
        for coding in ext.get("valueCodeableConcept", {}).get("coding", [])
    ]
