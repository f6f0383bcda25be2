"""``PatientRecord``: the FHIR resources of one hook call, normalised (see :mod:`normalise`) and indexed
by code, with the queries the rules ask of them. Resources about another patient are dropped and noted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cds_hooks.fhirtime import FhirInstantRange, parse_fhir_datetime
from cds_hooks.request import HookRequest
from cds_hooks.resources import (
    Bundle,
    Condition,
    DiagnosticReport,
    Medication,
    MedicationRequest,
    MedicationStatement,
    Observation,
    Patient,
    Procedure,
    ServiceRequest,
    iter_resources,
)
from rules.engine.codes.terminology import CodeKey, ValueSet, ValueSetIndex
from rules.engine.record.facts import (
    BACK_PAIN_WINDOW,
    CHRONIC_AT_LEAST,
    CURRENT_OBSERVATION_WINDOW,
    EPISODE_GAP,
    MEDICATION_RECENT_WINDOW,
    MEDICATIONS,
    NEW_WINDOW,
    ORDERS,
    PREEXISTING_AFTER,
    Episode,
    Evidence,
    Fact,
    MedicationFact,
    OrderFact,
)
from rules.engine.record.normalise import (
    TEXT_ONLY,
    RecordBuilder,
    condition_fact,
    medication_concept,
    medication_fact,
    observation_fact,
    procedure_fact,
    reference,
    report_order,
    request_order,
    unnamed_condition,
)

_MEDICATION_CURRENT = frozenset({"active", "intended", "on-hold"})
_MEDICATION_RECENT = frozenset({"completed", "stopped"})


def _raw_drafts(request: HookRequest) -> dict[str, dict[str, Any]]:
    """The draft orders exactly as sent, by ``Type/id``."""
    raw = getattr(request.context, "draft_orders_raw", None) or {}
    out: dict[str, dict[str, Any]] = {}
    for entry in raw.get("entry", []) if isinstance(raw, dict) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and "id" in resource:
            out[f"{resource.get('resourceType')}/{resource['id']}"] = resource
    return out


def _collect_medications(value: Any, into: dict[str, Medication]) -> None:
    """Medication resources of a prefetch value, by ``Medication/id`` and by their Bundle ``fullUrl``."""
    if isinstance(value, Medication) and value.id:
        into[f"Medication/{value.id}"] = value
    elif isinstance(value, Bundle):
        for entry in value.entry:
            if isinstance(entry.resource, Medication) and entry.full_url:
                into[entry.full_url] = entry.resource
            _collect_medications(entry.resource, into)


_FACT_MAKERS: dict[type, Callable[[Any, RecordBuilder], Fact | None]] = {
    Observation: observation_fact,
    Condition: condition_fact,
    Procedure: procedure_fact,
}


@dataclass(eq=False)
class PatientRecord:
    """The patient's normalised facts for one evaluation at ``now``."""

    now: datetime
    patient_id: str
    patient: Patient | None = None
    facts: list[Fact] = field(default_factory=list)
    medications: list[MedicationFact] = field(default_factory=list)
    orders: list[OrderFact] = field(default_factory=list)
    drafts: list[OrderFact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    by_code: dict[CodeKey, list[Fact]] = field(default_factory=dict)
    index: ValueSetIndex = field(default_factory=ValueSetIndex)
    chronic: ValueSet | None = None  # pain recorded as chronic (see :meth:`episode`)
    # What was received (resources by type) and what could not be read (resource type -> why), for the
    # sufficiency of reassuring cards (``rules.engine.evaluation.sufficiency``); Conditions carrying no words.
    received: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    unnamed: list[Evidence] = field(default_factory=list)
    _members: dict[str, list[Fact]] | None = None
    _present: frozenset[str] | None = None
    _by_text: set[tuple[int, str]] = field(default_factory=set)  # (id of a fact, value set) by text only
    _by_code_extremes: tuple[dict[CodeKey, datetime], dict[CodeKey, datetime]] | None = None

    @classmethod
    def from_request(cls, request: HookRequest, builder: RecordBuilder, now: datetime) -> PatientRecord:
        """Normalise the prefetch and the draft orders of ``request``."""
        record = cls(
            now=now, patient_id=request.context.patient_id, index=builder.index, chronic=builder.chronic
        )
        medications: dict[str, Medication] = {}
        for value in request.prefetch.values():
            _collect_medications(value, medications)
        for value in request.prefetch.values():
            for resource in iter_resources(value):
                kind = type(resource).__name__
                record.received[kind] = record.received.get(kind, 0) + 1
                record._add(resource, builder, medications)
        raw = _raw_drafts(request)
        for resource in iter_resources(getattr(request.context, "draft_orders", None)):
            if isinstance(resource, ServiceRequest) and not record._about_other_patient(resource):
                draft = request_order(resource, builder, raw.get(reference(resource), {}))
                if draft is not None:
                    record.drafts.append(draft)
        for fact in record.facts:
            if fact.onset_age is not None:
                record._date_by_age(fact)
            for key in fact.codes:
                record.by_code.setdefault(key, []).append(fact)
        return record

    def _date_by_age(self, fact: Fact) -> None:
        """A Condition dated by ``onsetAge``/``onsetRange``: its onset from the birth date (without one,
        the recorded date stays its time)."""
        assert fact.onset_age is not None
        if self.patient is None or self.patient.birth_date is None:
            return
        born = parse_fhir_datetime(self.patient.birth_date)
        low, high = fact.onset_age
        start = born.start + timedelta(days=low * 365.25)
        end = min(born.end + timedelta(days=high * 365.25), self.now)
        if start > self.now:
            return
        fact.onset = FhirInstantRange(start, max(start, end))
        fact.date_text = start.date().isoformat()
        if fact.last_seen is None or fact.last_seen < fact.onset.end:
            fact.last_seen = fact.onset.end

    def _about_other_patient(self, resource: Any) -> bool:
        subject = getattr(resource, "subject", None)
        ref = subject.reference if subject is not None else None
        if not ref or "Patient/" not in ref:
            return False
        return bool(ref.rsplit("Patient/", 1)[1] != self.patient_id)

    def _add(self, resource: Any, builder: RecordBuilder, medications: dict[str, Medication]) -> None:
        if isinstance(resource, Patient):
            if resource.id not in (None, self.patient_id):
                self.notes.append(f"Patient/{resource.id}: not the patient of this call; ignored")
            elif self.patient is None:
                self.patient = resource
            return
        if self._about_other_patient(resource):
            self.notes.append(f"{reference(resource)}: about another patient; ignored")
            return
        try:
            make = _FACT_MAKERS.get(type(resource))
            if make is not None:
                fact = make(resource, builder)
                if fact is not None:
                    self.facts.append(fact)
                elif isinstance(resource, Condition) and (unnamed := unnamed_condition(resource)):
                    self.unnamed.append(unnamed)
            elif isinstance(resource, MedicationStatement | MedicationRequest):
                medication = medication_fact(resource, builder, medications)
                if medication is not None:
                    self.medications.append(medication)
                elif medication_concept(resource, medications) is None and resource.medication_reference:
                    self.notes.append(
                        f"{reference(resource)}: its medication {resource.medication_reference.reference}"
                        " was not received; not read"
                    )
            elif isinstance(resource, ServiceRequest | DiagnosticReport):
                order = (
                    request_order(resource, builder, None)
                    if isinstance(resource, ServiceRequest)
                    else (report_order(resource, builder))
                )
                if order is not None:
                    self.orders.append(order)
        except ValueError:  # an impossible date that passed the pattern check
            self.notes.append(f"{reference(resource)}: unreadable date; ignored")

    # ---- findings -----------------------------------------------------------------------------------

    def members(self) -> dict[str, list[Fact]]:
        """Every value set of the rule set's index with the facts that belong to it (a code of the value
        set; a body-site-qualified code with that body site; or its text patterns), in record order. One
        pass over the facts, whatever the number of value sets; computed once per record."""
        if self._members is None:
            members: dict[str, list[Fact]] = {}
            index = self.index
            for fact in self.facts:
                names: set[str] = set()
                for key in fact.codes:
                    names.update(index.by_code.get(key, ()))
                    names.update(name for name, sites in index.sited.get(key, ()) if fact.body_sites & sites)
                    names.update(index.icd_names(key))
                # the text is the safety net for what no code made a member of any value set
                if fact.text and not names:
                    for vs in index.named_by_text(fact.text, fact.resource_type):
                        names.add(vs.name)
                        self._by_text.add((id(fact), vs.name))
                for name in names:
                    members.setdefault(name, []).append(fact)
            self._members = members
        return self._members

    def present(self) -> frozenset[str]:
        """The value sets some fact belongs to, plus ``MEDICATIONS`` and ``ORDERS`` when there are any: the
        atoms of a rule's ``needs``."""
        if self._present is None:
            atoms = set(self.members())
            if self.medications:
                atoms.add(MEDICATIONS)
            if self.orders or self.drafts:
                atoms.add(ORDERS)
            self._present = frozenset(atoms)
        return self._present

    def facts_in(self, valueset: ValueSet) -> list[Fact]:
        """Facts that belong to ``valueset`` (see :meth:`members`)."""
        return self.members().get(valueset.name, [])

    def by_text(self, fact: Fact, valueset: str) -> bool:
        """Whether ``fact`` belongs to ``valueset`` only through its text (no code of it is listed)."""
        self.members()
        return (id(fact), valueset) in self._by_text

    def evidence_of(self, fact: Fact, valueset: str, value: str | None = None) -> Evidence:
        """``fact`` as evidence for ``valueset``, saying so when only its text made it a member."""
        evidence = fact.evidence(value)
        if not self.by_text(fact, valueset):
            return evidence
        coded = [key for key in fact.codes if key[0] != TEXT_ONLY[0]]
        why = f"code {coded[0][1]} is not in the value set" if coded else "no code"
        shown = f"{evidence.value} (recognised from the text '{fact.label[:80]}'; {why})"
        return Evidence(evidence.label, shown, evidence.date, evidence.reference, evidence.code)

    def seen_within(self, fact: Fact, window: timedelta) -> bool:
        """The finding was recorded (or still present) within ``window`` before now."""
        return fact.last_seen is not None and fact.last_seen >= self.now - window

    def is_new(self, fact: Fact) -> bool:
        """Onset within 14 days, and the same finding was not already recorded more than 90 days ago."""
        if fact.onset is None or fact.onset.end < self.now - NEW_WINDOW:
            return False
        # (``fact`` itself began within 14 days, so it is never the pre-existing record looked for)
        cutoff = self.now - PREEXISTING_AFTER
        earliest = self._extremes()[0]
        return not any(key in earliest and earliest[key] < cutoff for key in fact.codes)

    def _extremes(self) -> tuple[dict[CodeKey, datetime], dict[CodeKey, datetime]]:
        """By code, once per record: the earliest onset of a present, current finding, and the latest time
        a finding was seen present. ``is_new`` and ``is_ongoing`` then cost one look-up per code, not a scan
        of every record of that code (10,000 Observations of one code took seconds)."""
        if self._by_code_extremes is None:
            earliest: dict[CodeKey, datetime] = {}
            latest: dict[CodeKey, datetime] = {}
            for key, facts in self.by_code.items():
                onsets = [f.onset.end for f in facts if f.present and f.current and f.onset is not None]
                seen = [f.last_seen for f in facts if f.present and f.last_seen is not None]
                if onsets:
                    earliest[key] = min(onsets)
                if seen:
                    latest[key] = max(seen)
            self._by_code_extremes = (earliest, latest)
        return self._by_code_extremes

    def is_ongoing(self, fact: Fact) -> bool:
        """Present now: an active Condition, a Procedure in progress, or a finding recorded (present) within
        the last 90 days."""
        if fact.ongoing:
            return True
        if fact.resource_type == "Condition":
            return False
        since, latest = self.now - CURRENT_OBSERVATION_WINDOW, self._extremes()[1]
        return any(key in latest and latest[key] >= since for key in fact.codes)

    def persisting(self, fact: Fact, longer_than: timedelta) -> bool:
        """Began more than ``longer_than`` ago and is still present (see :meth:`is_ongoing`)."""
        if fact.onset is None or fact.onset.end > self.now - longer_than:
            return False
        return self.is_ongoing(fact)

    # ---- the patient --------------------------------------------------------------------------------

    def age(self, at: datetime | None = None) -> int | None:
        """Age in completed years at ``at`` (default now), Part B6; None without a birth date.

        A partial birth date (``1976`` or ``1976-05``) counts from its earliest day, the oldest the patient
        can be.
        """
        if self.patient is None or self.patient.birth_date is None:
            return None
        when = at or self.now
        born = parse_fhir_datetime(self.patient.birth_date).start
        return when.year - born.year - ((when.month, when.day) < (born.month, born.day))

    def gender(self) -> str:
        return (self.patient.gender if self.patient is not None else None) or "unknown"

    def patient_reference(self) -> str:
        return f"Patient/{self.patient_id}"

    # ---- medications and orders ---------------------------------------------------------------------

    def medication_counts(self, med: MedicationFact) -> bool:
        """Part B1: active/intended count; completed or stopped only within the last 90 days."""
        if med.status in _MEDICATION_CURRENT:
            return True
        if med.status in _MEDICATION_RECENT:
            last = med.end or med.start
            return last is not None and last >= self.now - MEDICATION_RECENT_WINDOW
        return False

    # ---- the low back pain gate and episode (Part B3, B4) -------------------------------------------

    def back_pain_evidence(self, back_pain: ValueSet) -> list[Evidence]:
        """What shows low back pain (the gate, Part B4): an active Condition, or an Observation present
        within 90 days, of low back pain; or a draft order whose reason is low back pain."""
        found = [
            fact.evidence()
            for fact in self.facts_in(back_pain)
            if fact.present
            and (
                (fact.resource_type == "Condition" and fact.current)
                or (fact.resource_type == "Observation" and self.seen_within(fact, BACK_PAIN_WINDOW))
            )
        ]
        for order in self.drafts:
            reason = back_pain.any_of(order.reasons)
            if reason is not None:
                found.append(
                    Evidence(
                        "Reason for the order", "low back pain", order.date_text, order.reference, reason
                    )
                )
        return found

    def has_back_pain(self, back_pain: ValueSet) -> bool:
        """Whether the record shows the low back pain that gates every rule (:meth:`back_pain_evidence`)."""
        return bool(self.back_pain_evidence(back_pain))

    def episode(self, back_pain: ValueSet) -> Episode | None:
        """The current episode: low back pain records merged across gaps of up to 90 days."""
        spans: list[tuple[datetime, datetime, Fact]] = []
        for fact in self.facts_in(back_pain):
            if not fact.present or fact.onset is None:
                continue
            end = (
                self.now
                if fact.resource_type == "Condition" and fact.current
                else (fact.last_seen or fact.onset.end)
            )
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
        if self.chronic is not None and start > self.now - CHRONIC_AT_LEAST:
            # "Chronic low back pain" says 12 weeks or more, even when it was first recorded last week.
            chronic = [
                f for f in self.facts_in(self.chronic) if f.present and f.last_seen and f.last_seen >= start
            ]
            if chronic:
                start, first = self.now - CHRONIC_AT_LEAST, chronic[0]
        return Episode(start, first, max(self.now - start, timedelta(0)))
