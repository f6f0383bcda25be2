"""``PatientRecord``: the FHIR resources of one hook call, normalised into facts the rules can query.

The conventions are those of the knowledge base, Part B:

- B1 status: Observations count when final, amended, corrected or preliminary; Conditions that are
  refuted or entered-in-error are dropped; a Condition is *current* when its clinicalStatus is active,
  recurrence or relapse (or absent); MedicationStatements count when active or intended, or completed or
  stopped within 90 days.
- B2 presence: valueBoolean, the SNOMED CT Yes/No/Negative concepts, or no value with a non-negative
  interpretation; an Observation with a dataAbsentReason is ignored; a Condition is always present.
- B3 time: Observation effective[x] else issued; Condition onset[x] else recordedDate. Partial dates
  are kept as the span they denote.
- B6a body site and laterality: bodySite codes, and laterality from a 272741003 component or from
  qualifier codings on the body site.

Only resources carrying a code the rule set reads (or matching a value set's text pattern) become facts,
so a large record costs little. Resources about another patient are dropped and noted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cds_hooks.fhirtime import FhirInstantRange, parse_fhir_datetime
from cds_hooks.request import HookRequest
from cds_hooks.resources import (
    CodeableConcept,
    Condition,
    DiagnosticReport,
    MedicationStatement,
    Observation,
    Patient,
    Procedure,
    ServiceRequest,
    iter_resources,
)
from rules.engine.terminology import CodeKey, ValueSet

SNOMED = "http://snomed.info/sct"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_YES = (SNOMED, "373066001")
_NO = frozenset({(SNOMED, "373067005"), (SNOMED, "260385009")})
_NEGATIVE_INTERPRETATION = frozenset({(INTERPRETATION, "NEG"), (INTERPRETATION, "ND"), *_NO})
_LATERALITY_ATTRIBUTE = (SNOMED, "272741003")
_SIDES: dict[CodeKey, frozenset[str]] = {
    (SNOMED, "24028007"): frozenset({"right"}),
    (SNOMED, "7771000"): frozenset({"left"}),
    (SNOMED, "51440002"): frozenset({"right", "left"}),
}
_OBSERVATION_COUNTS = frozenset({"final", "amended", "corrected", "preliminary"})
_CONDITION_CURRENT = frozenset({"active", "recurrence", "relapse"})
_CONDITION_DROPPED = frozenset({"entered-in-error", "refuted"})
_PROCEDURE_DROPPED = frozenset({"entered-in-error", "not-done", "preparation"})
_REPORT_DONE = frozenset({"final", "amended", "corrected", "appended", "preliminary", "partial"})
_MEDICATION_CURRENT = frozenset({"active", "intended", "on-hold"})
_MEDICATION_RECENT = frozenset({"completed", "stopped"})

# Knowledge base Part B3: "new" is onset within 14 days; pre-existing if recorded more than 90 days
# earlier; an episode of low back pain is broken by more than 90 days without a record.
NEW_WINDOW = timedelta(days=14)
PREEXISTING_AFTER = timedelta(days=90)
EPISODE_GAP = timedelta(days=90)
CONTEXT_OBSERVATION_WINDOW = timedelta(days=90)
MEDICATION_RECENT_WINDOW = timedelta(days=90)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One piece of evidence a card cites: what, its value, when, and which resource."""

    label: str
    value: str
    date: str | None = None
    reference: str | None = None
    code: CodeKey | None = None


@dataclass(slots=True, eq=False)
class Fact:
    """A normalised Observation, Condition or Procedure."""

    resource_type: str
    reference: str
    codes: tuple[CodeKey, ...]
    text: str
    present: bool
    current: bool
    onset: FhirInstantRange | None
    last_seen: datetime | None
    date_text: str | None
    body_sites: frozenset[CodeKey] = frozenset()
    laterality: frozenset[str] = frozenset()
    interpretation: frozenset[CodeKey] = frozenset()
    quantity: tuple[float, str | None] | None = None
    reference_high: tuple[float, str | None] | None = None
    label: str = ""

    def evidence(self, value: str | None = None, code: CodeKey | None = None) -> Evidence:
        shown = value if value is not None else ("present" if self.present else "absent")
        return Evidence(self.label, shown, self.date_text, self.reference, code or self.codes[0])


@dataclass(slots=True, eq=False)
class MedicationFact:
    reference: str
    codes: tuple[CodeKey, ...]
    label: str
    status: str
    start: datetime | None
    end: datetime | None
    date_text: str | None


@dataclass(slots=True, eq=False)
class OrderFact:
    """A ServiceRequest (draft, active, completed…) or a DiagnosticReport (always 'completed')."""

    resource_type: str
    reference: str
    codes: tuple[CodeKey, ...]
    label: str
    status: str
    when: datetime | None
    date_text: str | None
    reasons: tuple[CodeKey, ...] = ()


@dataclass(frozen=True, slots=True)
class Episode:
    """The current low back pain episode: when it began, and the record that says so."""

    start: datetime
    first: Fact
    length: timedelta

    def evidence(self) -> Evidence:
        days = self.length.days
        return Evidence(
            "Low back pain episode",
            f"{days} day{'s' if days != 1 else ''}",
            self.first.date_text,
            self.first.reference,
            self.first.codes[0],
        )


def _keys(concept: CodeableConcept | None) -> tuple[CodeKey, ...]:
    if concept is None:
        return ()
    return tuple((c.system, c.code) for c in concept.coding if c.system and c.code)


def _concept_text(concept: CodeableConcept | None) -> str:
    if concept is None:
        return ""
    parts = [concept.text or ""] + [c.display or "" for c in concept.coding]
    return " ".join(p for p in parts if p)


def _range(text: str | None) -> FhirInstantRange | None:
    return parse_fhir_datetime(text) if text else None


def _status_code(concept: CodeableConcept | None) -> str | None:
    if concept is None:
        return None
    return next((c.code for c in concept.coding if c.code), None)


@dataclass
class RecordBuilder:
    """What the rule set reads: only matching resources become facts."""

    relevant: frozenset[CodeKey]
    text_pattern: re.Pattern[str] | None = None


@dataclass(eq=False)
class PatientRecord:
    """The patient's normalised facts, indexed by code, for one evaluation at ``now``."""

    now: datetime
    patient_id: str
    patient: Patient | None = None
    facts: list[Fact] = field(default_factory=list)
    medications: list[MedicationFact] = field(default_factory=list)
    orders: list[OrderFact] = field(default_factory=list)
    drafts: list[OrderFact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    by_code: dict[CodeKey, list[Fact]] = field(default_factory=dict)
    _vs_cache: dict[str, list[Fact]] = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def from_request(cls, request: HookRequest, builder: RecordBuilder, now: datetime) -> PatientRecord:
        """Normalise the prefetch and draft orders of ``request``."""
        record = cls(now=now, patient_id=request.context.patient_id)
        resources: list[Any] = []
        for value in request.prefetch.values():
            resources.extend(iter_resources(value))
        for resource in resources:
            record._add(resource, builder, draft=False)
        draft_orders = getattr(request.context, "draft_orders", None)
        for resource in iter_resources(draft_orders):
            record._add(resource, builder, draft=True)
        for fact in record.facts:
            for key in fact.codes:
                record.by_code.setdefault(key, []).append(fact)
        return record

    def _about_other_patient(self, resource: Any) -> bool:
        subject = getattr(resource, "subject", None)
        ref = subject.reference if subject is not None else None
        if not ref or "Patient/" not in ref:
            return False
        return bool(ref.rsplit("Patient/", 1)[1] != self.patient_id)

    def _add(self, resource: Any, builder: RecordBuilder, *, draft: bool) -> None:
        if isinstance(resource, Patient):
            if resource.id in (None, self.patient_id) and self.patient is None:
                self.patient = resource
            return
        if self._about_other_patient(resource):
            self.notes.append(f"{resource.resource_type}/{resource.id}: about another patient; ignored")
            return
        try:
            if isinstance(resource, Observation):
                self._add_observation(resource, builder)
            elif isinstance(resource, Condition):
                self._add_condition(resource, builder)
            elif isinstance(resource, Procedure):
                self._add_procedure(resource, builder)
            elif isinstance(resource, MedicationStatement):
                self._add_medication(resource, builder)
            elif isinstance(resource, ServiceRequest):
                self._add_request(resource, builder, draft=draft)
            elif isinstance(resource, DiagnosticReport):
                self._add_report(resource, builder)
        except ValueError:  # an impossible date that passed the pattern check (e.g. an hour in a period)
            self.notes.append(f"{resource.resource_type}/{resource.id}: unreadable date; ignored")

    def _relevant(
        self, keys: tuple[CodeKey, ...], text: str, builder: RecordBuilder
    ) -> tuple[CodeKey, ...] | None:
        matched = tuple(key for key in keys if key in builder.relevant)
        if matched:
            return matched
        if builder.text_pattern is not None and text and builder.text_pattern.search(text):
            return keys or (("urn:lumbar-cds:text", "text"),)
        return None

    def _ref(self, resource: Any) -> str:
        return (
            f"{resource.resource_type}/{resource.id}" if resource.id else f"{resource.resource_type} (no id)"
        )

    def _add_observation(self, obs: Observation, builder: RecordBuilder) -> None:
        text = _concept_text(obs.code)
        codes = self._relevant(_keys(obs.code), text, builder)
        if codes is None or obs.status not in _OBSERVATION_COUNTS or obs.data_absent_reason is not None:
            return
        interpretation = frozenset(k for concept in obs.interpretation for k in _keys(concept))
        present = self._observation_present(obs, interpretation)
        if obs.effective_period is not None and obs.effective_period.start is not None:
            onset_text: str | None = obs.effective_period.start
            last_text: str | None = obs.effective_period.end or obs.effective_period.start
        else:
            onset_text = obs.effective_date_time or obs.effective_instant or obs.issued
            last_text = onset_text
        onset = _range(onset_text)
        last = _range(last_text)
        sites, sides = self._sites(obs.body_site)
        for component in obs.component:
            if _LATERALITY_ATTRIBUTE in _keys(component.code):
                for key in _keys(component.value_codeable_concept):
                    sides |= _SIDES.get(key, frozenset())
        quantity: tuple[float, str | None] | None = None
        q = obs.value_quantity
        if q is not None and q.value is not None:
            quantity = (q.value, q.code if q.code else q.unit)
        high: tuple[float, str | None] | None = None
        for rr in obs.reference_range:
            if rr.high is not None and rr.high.value is not None:
                high = (rr.high.value, rr.high.code or rr.high.unit)
                break
        self.facts.append(
            Fact(
                "Observation",
                self._ref(obs),
                codes,
                text,
                present,
                True,
                onset,
                last.end if last else None,
                onset_text,
                sites,
                sides,
                interpretation,
                quantity,
                high,
                label=obs.code.text or self._display(obs.code),
            )
        )

    @staticmethod
    def _observation_present(obs: Observation, interpretation: frozenset[CodeKey]) -> bool:
        if obs.value_boolean is not None:
            return obs.value_boolean
        if obs.value_codeable_concept is not None:
            values = set(_keys(obs.value_codeable_concept))
            if values & _NO:
                return False
            if _YES in values:
                return True
        return not (interpretation & _NEGATIVE_INTERPRETATION)

    def _sites(
        self, concepts: CodeableConcept | Iterable[CodeableConcept] | None
    ) -> tuple[frozenset[CodeKey], frozenset[str]]:
        if concepts is None:
            return frozenset(), frozenset()
        items = [concepts] if isinstance(concepts, CodeableConcept) else list(concepts)
        keys = [key for concept in items for key in _keys(concept)]
        sides: frozenset[str] = frozenset()
        for key in keys:
            sides |= _SIDES.get(key, frozenset())
        return frozenset(keys), sides

    @staticmethod
    def _display(concept: CodeableConcept | None) -> str:
        if concept is None:
            return "(uncoded)"
        return next((c.display for c in concept.coding if c.display), None) or concept.text or "(uncoded)"

    def _add_condition(self, cond: Condition, builder: RecordBuilder) -> None:
        text = _concept_text(cond.code)
        codes = self._relevant(_keys(cond.code), text, builder)
        if codes is None or _status_code(cond.verification_status) in _CONDITION_DROPPED:
            return
        clinical = _status_code(cond.clinical_status)
        onset_text = cond.onset_date_time or (cond.onset_period.start if cond.onset_period else None)
        onset_text = onset_text or cond.recorded_date
        onset = _range(onset_text)
        recorded = _range(cond.recorded_date)
        ends = [r.end for r in (onset, recorded) if r is not None]
        sites, sides = self._sites(cond.body_site)
        self.facts.append(
            Fact(
                "Condition",
                self._ref(cond),
                codes,
                text,
                True,
                clinical is None or clinical in _CONDITION_CURRENT,
                onset,
                max(ends) if ends else None,
                onset_text,
                sites,
                sides,
                label=(cond.code.text if cond.code else None) or self._display(cond.code),
            )
        )

    def _add_procedure(self, proc: Procedure, builder: RecordBuilder) -> None:
        text = _concept_text(proc.code)
        codes = self._relevant(_keys(proc.code), text, builder)
        if codes is None or proc.status in _PROCEDURE_DROPPED:
            return
        when = proc.performed_date_time or (proc.performed_period.start if proc.performed_period else None)
        onset = _range(when)
        self.facts.append(
            Fact(
                "Procedure",
                self._ref(proc),
                codes,
                text,
                True,
                True,
                onset,
                onset.end if onset else None,
                when,
                label=self._display(proc.code),
            )
        )

    def _add_medication(self, med: MedicationStatement, builder: RecordBuilder) -> None:
        codes = self._relevant(_keys(med.medication_codeable_concept), "", builder)
        if codes is None or med.status is None:
            return
        period = med.effective_period
        start_text = period.start if period is not None else med.effective_date_time
        start = _range(start_text)
        end = _range(period.end) if period is not None else None
        self.medications.append(
            MedicationFact(
                self._ref(med),
                codes,
                self._display(med.medication_codeable_concept),
                med.status,
                start.start if start else None,
                end.end if end else None,
                start_text,
            )
        )

    def _add_request(self, req: ServiceRequest, builder: RecordBuilder, *, draft: bool) -> None:
        codes = self._relevant(_keys(req.code), "", builder)
        reasons = tuple(k for concept in req.reason_code for k in _keys(concept))
        if codes is None and not (draft and reasons):
            return
        when_text = req.authored_on or req.occurrence_date_time
        when = _range(when_text)
        order = OrderFact(
            "ServiceRequest",
            self._ref(req),
            codes or (),
            self._display(req.code),
            "draft" if draft else (req.status or "unknown"),
            when.end if when else None,
            when_text,
            reasons,
        )
        (self.drafts if draft else self.orders).append(order)

    def _add_report(self, rep: DiagnosticReport, builder: RecordBuilder) -> None:
        codes = self._relevant(_keys(rep.code), "", builder)
        if codes is None or rep.status not in _REPORT_DONE:
            return
        when_text = rep.effective_date_time or (rep.effective_period.start if rep.effective_period else None)
        when_text = when_text or rep.issued
        when = _range(when_text)
        self.orders.append(
            OrderFact(
                "DiagnosticReport",
                self._ref(rep),
                codes,
                self._display(rep.code),
                "completed",
                when.end if when else None,
                when_text,
            )
        )

    # ---- queries ------------------------------------------------------------------------------------

    def facts_in(self, valueset: ValueSet) -> list[Fact]:
        """Facts coded from ``valueset`` (body-site rules and text patterns applied), cached."""
        cached = self._vs_cache.get(valueset.name)
        if cached is not None:
            return cached
        seen: set[int] = set()
        out: list[Fact] = []

        def take(fact: Fact) -> None:
            if id(fact) not in seen:
                seen.add(id(fact))
                out.append(fact)

        for key in valueset.codes:
            for fact in self.by_code.get(key, ()):
                take(fact)
        for key, sites in valueset.sited.items():
            for fact in self.by_code.get(key, ()):
                if fact.body_sites & sites:
                    take(fact)
        if valueset.text is not None:
            for fact in self.facts:
                if fact.text and valueset.text.search(fact.text):
                    take(fact)
        self._vs_cache[valueset.name] = out
        return out

    def seen_within(self, fact: Fact, window: timedelta) -> bool:
        """The finding was recorded (or still present) within ``window`` before now."""
        return fact.last_seen is not None and fact.last_seen >= self.now - window

    def is_new(self, fact: Fact) -> bool:
        """Onset within 14 days, and the same finding was not already recorded more than 90 days ago."""
        if fact.onset is None or fact.onset.end < self.now - NEW_WINDOW:
            return False
        cutoff = self.now - PREEXISTING_AFTER
        for key in fact.codes:
            for other in self.by_code.get(key, ()):
                if (
                    other is not fact
                    and other.present
                    and other.current
                    and other.onset is not None
                    and other.onset.end < cutoff
                ):
                    return False
        return True

    def age(self) -> int | None:
        """Age in completed years at now (Part B6); None without a birth date.

        A partial birth date (``1976`` or ``1976-05``) counts from its earliest day, the oldest the patient
        can be.
        """
        if self.patient is None or self.patient.birth_date is None:
            return None
        born = parse_fhir_datetime(self.patient.birth_date).start
        return self.now.year - born.year - ((self.now.month, self.now.day) < (born.month, born.day))

    def gender(self) -> str:
        return (self.patient.gender if self.patient is not None else None) or "unknown"

    def patient_reference(self) -> str:
        return f"Patient/{self.patient_id}"

    def medication_counts(self, med: MedicationFact) -> bool:
        """Part B1: active/intended count; completed or stopped only within the last 90 days."""
        if med.status in _MEDICATION_CURRENT:
            return True
        if med.status in _MEDICATION_RECENT:
            last = med.end or med.start
            return last is not None and last >= self.now - MEDICATION_RECENT_WINDOW
        return False

    def has_context(self, context: ValueSet) -> bool:
        """Part B4: an active Condition, or an Observation present within 90 days, of low back pain;
        or a draft order whose reason is low back pain."""
        for fact in self.facts_in(context):
            if not fact.present:
                continue
            if fact.resource_type == "Condition" and fact.current:
                return True
            if fact.resource_type == "Observation" and self.seen_within(fact, CONTEXT_OBSERVATION_WINDOW):
                return True
        keys = context.keys
        return any(set(order.reasons) & keys for order in self.drafts)

    def episode(self, context: ValueSet) -> Episode | None:
        """The current episode: low back pain records merged across gaps of up to 90 days (Part B3)."""
        spans: list[tuple[datetime, datetime, Fact]] = []
        for fact in self.facts_in(context):
            if not fact.present or fact.onset is None:
                continue
            if fact.resource_type == "Condition" and fact.current:
                end = self.now
            else:
                end = fact.last_seen or fact.onset.end
            spans.append((fact.onset.start, max(end, fact.onset.start), fact))
        if not spans:
            return None
        spans.sort(key=lambda span: span[0])
        start, end, first = spans[0]
        for s_start, s_end, fact in spans[1:]:
            if s_start > end + EPISODE_GAP:
                start, end, first = s_start, s_end, fact
            else:
                end = max(end, s_end)
        if end < self.now - EPISODE_GAP:
            return None
        return Episode(start, first, max(self.now - start, timedelta(0)))
