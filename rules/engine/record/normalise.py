"""Normalising FHIR resources into facts, by the conventions of the knowledge base, Part B.

- B1 status: Observations count when final, amended, corrected or preliminary; Conditions that are
  refuted or entered-in-error are dropped; a Condition is *current* when its clinicalStatus is active,
  recurrence or relapse (or absent); Procedures not done or entered in error are dropped.
- B2 presence: valueBoolean, the SNOMED CT Yes/No/Negative concepts, or no value with a non-negative
  interpretation; an Observation with a dataAbsentReason is ignored; a Condition is always present.
- B3 time: Observation effective[x] else issued; Condition onset[x] else recordedDate.
- B6a body site and laterality: bodySite codes, and laterality from a 272741003 component or from
  qualifier codings on the body site.

Only resources carrying a code the rule set reads (or text matching a value set's pattern) become facts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cds_hooks.fhirtime import FhirInstantRange, parse_fhir_datetime
from cds_hooks.resources import (
    CodeableConcept,
    Condition,
    DiagnosticReport,
    Medication,
    MedicationRequest,
    MedicationStatement,
    Observation,
    Procedure,
    Quantity,
    ServiceRequest,
)
from rules.engine.codes.terminology import CodeKey, ValueSet, ValueSetIndex, normal_key
from rules.engine.record.facts import INTERPRETATION, SNOMED, Evidence, Fact, MedicationFact, OrderFact

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
TEXT_ONLY: CodeKey = ("urn:lumbar-cds:text", "text")


@dataclass(frozen=True)
class RecordBuilder:
    """What the rule set reads: only resources with these codes (or matching text) become facts."""

    relevant: frozenset[CodeKey]
    index: ValueSetIndex = field(default_factory=ValueSetIndex)  # which value sets a fact belongs to
    chronic: ValueSet | None = None  # pain recorded as chronic: an episode of at least 12 weeks

    def match(
        self, keys: tuple[CodeKey, ...], text: str, resource_type: str | None = None
    ) -> tuple[CodeKey, ...] | None:
        """The relevant codes of a resource; its codes (or a text marker) when only its text matches a
        pattern that counts in its resource type (None: any pattern, as for medications)."""
        relevant = self.relevant
        matched = tuple(key for key in keys if key in relevant or self.index.icd_names(key))
        if matched:
            return matched
        if text and next(self.index.named_by_text(text, resource_type), None) is not None:
            return keys or (TEXT_ONLY,)
        return None


def keys_of(concept: CodeableConcept | None) -> tuple[CodeKey, ...]:
    """The codings of a concept as (system, code), normalised (OID systems, ICD-10-CM dots)."""
    if concept is None:
        return ()
    return tuple(normal_key(c.system, c.code) for c in concept.coding if c.system and c.code)


def _text(concept: CodeableConcept | None) -> str:
    if concept is None:
        return ""
    return " ".join(p for p in [concept.text or "", *(c.display or "" for c in concept.coding)] if p)


def _display(concept: CodeableConcept | None, missing: str = "(uncoded)") -> str:
    if concept is None:
        return missing
    return next((c.display for c in concept.coding if c.display), None) or concept.text or missing


# A LOINC long common name, "C reactive protein [Mass/volume] in Serum or Plasma": the analyte is what a
# card needs ("C reactive protein"), the property, system and method are not.
_LOINC_LONG_NAME = re.compile(r"^(?P<analyte>[^\[\]]+?) \[[^\]]*\]( in [^\[\]]+)?$")


def short_name(label: str) -> str:
    """The analyte of a LOINC long common name ("C reactive protein [Mass/volume] in Serum or Plasma" ->
    "C reactive protein"); any other label as it is."""
    match = _LOINC_LONG_NAME.match(label)
    return match.group("analyte") if match else label


def site_words(body_site: Iterable[CodeableConcept] | CodeableConcept | None, sides: frozenset[str]) -> str:
    """Where a finding was recorded, in words ("Perineal structure", "left", "both sides")."""
    concepts = [body_site] if isinstance(body_site, CodeableConcept) else list(body_site or ())
    words = [word for c in concepts if (word := c.text or _display(c, ""))]
    side = "both sides" if sides >= {"left", "right"} else next(iter(sides), "") if len(sides) == 1 else ""
    if side and not any(side in word.lower() for word in words):
        words.append(side)
    return ", ".join(words)


def _range(text: str | None) -> FhirInstantRange | None:
    return parse_fhir_datetime(text) if text else None


def _status(concept: CodeableConcept | None) -> str | None:
    return next((c.code for c in concept.coding if c.code), None) if concept is not None else None


def reference(resource: Any) -> str:
    rtype = resource.resource_type
    return f"{rtype}/{resource.id}" if resource.id else f"{rtype} (no id)"


def _sites(
    concepts: CodeableConcept | Iterable[CodeableConcept] | None,
) -> tuple[frozenset[CodeKey], frozenset[str]]:
    if concepts is None:
        return frozenset(), frozenset()
    items = [concepts] if isinstance(concepts, CodeableConcept) else list(concepts)
    keys = [key for concept in items for key in keys_of(concept)]
    sides: frozenset[str] = frozenset()
    for key in keys:
        sides |= _SIDES.get(key, frozenset())
    return frozenset(keys), sides


def _present(obs: Observation, interpretation: frozenset[CodeKey]) -> bool:
    if obs.value_boolean is not None:
        return obs.value_boolean
    if obs.value_codeable_concept is not None:
        values = set(keys_of(obs.value_codeable_concept))
        if values & _NO:
            return False
        if _YES in values:
            return True
    return not (interpretation & _NEGATIVE_INTERPRETATION)


def observation_fact(obs: Observation, builder: RecordBuilder) -> Fact | None:
    text = _text(obs.code)
    codes = builder.match(keys_of(obs.code), text, "Observation")
    if codes is None or obs.status not in _OBSERVATION_COUNTS or obs.data_absent_reason is not None:
        return None
    interpretation = frozenset(k for concept in obs.interpretation for k in keys_of(concept))
    period = obs.effective_period
    if period is not None and period.start is not None:
        onset_text: str | None = period.start
        last_text: str | None = period.end or period.start
    else:
        onset_text = obs.effective_date_time or obs.effective_instant or obs.issued
        last_text = onset_text
    last = _range(last_text)
    sites, sides = _sites(obs.body_site)
    for component in obs.component:
        if _LATERALITY_ATTRIBUTE in keys_of(component.code):
            for key in keys_of(component.value_codeable_concept):
                sides |= _SIDES.get(key, frozenset())
    quantity: tuple[float, str | None] | None = None
    q = obs.value_quantity
    if q is not None and q.value is not None:
        quantity = (q.value, q.code if q.code else q.unit)
    elif obs.value_integer is not None:
        quantity = (float(obs.value_integer), None)
    high: tuple[float, str | None] | None = None
    for rr in obs.reference_range:
        if rr.high is not None and rr.high.value is not None:
            high = (rr.high.value, rr.high.code or rr.high.unit)
            break
    return Fact(
        "Observation",
        reference(obs),
        codes,
        text,
        _present(obs, interpretation),
        True,
        _range(onset_text),
        last.end if last else None,
        onset_text,
        short_name(obs.code.text or _display(obs.code)),
        sites,
        sides,
        interpretation,
        frozenset(keys_of(obs.value_codeable_concept)),
        quantity,
        high,
        site=site_words(obs.body_site, sides),
    )


_YEARS_PER_UNIT = {"a": 1.0, "mo": 1 / 12, "wk": 7 / 365.25, "d": 1 / 365.25, "h": 1 / 8766}
_UNIT_NAMES = {
    "year": "a",
    "years": "a",
    "yr": "a",
    "y": "a",
    "month": "mo",
    "months": "mo",
    "week": "wk",
    "weeks": "wk",
    "day": "d",
    "days": "d",
}


def _years(quantity: Quantity | None) -> float | None:
    """An Age quantity in years (UCUM ``a``, ``mo``, ``wk``, ``d``, ``h``, or their plain names)."""
    if quantity is None or quantity.value is None:
        return None
    unit = quantity.code or _UNIT_NAMES.get((quantity.unit or "").lower(), "a" if not quantity.unit else "")
    per = _YEARS_PER_UNIT.get(unit)
    return quantity.value * per if per is not None else None


def onset_age(cond: Condition) -> tuple[float, float] | None:
    """``onsetAge`` or ``onsetRange`` as the span of ages (in years) the onset can mean: "45 a" is any day
    from the 45th birthday to the day before the 46th."""
    if cond.onset_age is not None:
        age = _years(cond.onset_age)
        if age is not None:
            whole = (cond.onset_age.code or "a") == "a"
            return age, age + 1 if whole else age
    if cond.onset_range is not None:
        low, high = _years(cond.onset_range.low), _years(cond.onset_range.high)
        if low is not None or high is not None:
            return (low if low is not None else 0.0), (high + 1 if high is not None else 200.0)
    return None


def condition_fact(cond: Condition, builder: RecordBuilder) -> Fact | None:
    text = _text(cond.code)
    codes = builder.match(keys_of(cond.code), text, "Condition")
    if codes is None or _status(cond.verification_status) in _CONDITION_DROPPED:
        return None
    clinical = _status(cond.clinical_status)
    explicit = cond.onset_date_time or (cond.onset_period.start if cond.onset_period else None)
    onset_text = explicit or cond.recorded_date
    onset = _range(onset_text)
    recorded = _range(cond.recorded_date)
    # present until it abated: a resolved problem's time window runs from its abatement
    period_end = cond.abatement_period.end if cond.abatement_period else None
    abated = _range(cond.abatement_date_time or period_end)
    ends = [r.end for r in (onset, recorded, abated) if r is not None]
    sites, sides = _sites(cond.body_site)
    label = (cond.code.text if cond.code else None) or _display(cond.code)
    current = clinical is None or clinical in _CONDITION_CURRENT
    last = max(ends) if ends else None
    return Fact(
        "Condition",
        reference(cond),
        codes,
        text,
        True,
        current,
        onset,
        last,
        onset_text,
        label,
        sites,
        sides,
        ongoing=current,
        onset_age=onset_age(cond) if explicit is None else None,
        site=site_words(cond.body_site, sides),
    )


def unnamed_condition(cond: Condition) -> Evidence | None:
    """A Condition that counts (current, not refuted) but carries no words at all, only codes no value set
    holds: the service cannot tell what it is (issue 15), so it is evidence that the record was not all
    recognised."""
    if _status(cond.verification_status) in _CONDITION_DROPPED or _text(cond.code):
        return None
    clinical = _status(cond.clinical_status)
    if clinical is not None and clinical not in _CONDITION_CURRENT:
        return None
    coded = ", ".join(f"{system} {code}" for system, code in keys_of(cond.code)) or "no code"
    when = cond.onset_date_time or cond.recorded_date
    return Evidence("Condition without a name", f"not recognised ({coded})", when, reference(cond))


def procedure_fact(proc: Procedure, builder: RecordBuilder) -> Fact | None:
    text = _text(proc.code)
    codes = builder.match(keys_of(proc.code), text, "Procedure")
    if codes is None or proc.status in _PROCEDURE_DROPPED:
        return None
    period = proc.performed_period
    when = proc.performed_date_time or (period.start if period else None)
    onset = _range(when)
    end = _range(period.end) if period is not None and period.end else None
    ongoing = proc.status in ("in-progress", "on-hold") or (period is not None and period.end is None)
    last = end.end if end else (onset.end if onset else None)
    return Fact(
        "Procedure",
        reference(proc),
        codes,
        text,
        True,
        True,
        onset,
        last,
        when,
        _display(proc.code),
        ongoing=ongoing,
    )


_REQUEST_STATUS = {"active": "active", "on-hold": "on-hold", "completed": "completed", "stopped": "stopped"}
"""MedicationRequest statuses that count, as the MedicationStatement status they mean (Part B1);
draft, cancelled, entered-in-error and unknown requests do not count."""
_REQUEST_INTENTS = frozenset(
    {"order", "plan", "original-order", "reflex-order", "filler-order", "instance-order"}
)


def medication_concept(
    med: MedicationStatement | MedicationRequest, medications: dict[str, Medication]
) -> tuple[tuple[CodeKey, ...], str, str] | None:
    """The codes, text and label of what a medication resource names: its ``medicationCodeableConcept``,
    or the Medication its ``medicationReference`` points to (contained, in the same Bundle, or fetched),
    with that Medication's ingredient codes. None when a reference cannot be resolved."""
    if med.medication_codeable_concept is not None:
        concept = med.medication_codeable_concept
        return keys_of(concept), _text(concept), _display(concept)
    ref = med.medication_reference.reference if med.medication_reference is not None else None
    if not ref:
        return None
    found: Medication | None = None
    if ref.startswith("#"):
        found = next((c for c in med.contained if isinstance(c, Medication) and c.id == ref[1:]), None)
    else:
        parts = ref.rstrip("/").split("/")
        found = medications.get(ref) or medications.get("/".join(parts[-2:]))
    if found is None:
        return None
    concepts = [found.code, *(i.item_codeable_concept for i in found.ingredient)]
    keys = tuple(key for concept in concepts for key in keys_of(concept))
    text = " ".join(_text(concept) for concept in concepts if concept is not None)
    label = _display(found.code) if found.code is not None else None
    shown = med.medication_reference.display if med.medication_reference is not None else None
    return keys, text, label or shown or "(uncoded)"


def medication_fact(
    med: MedicationStatement | MedicationRequest,
    builder: RecordBuilder,
    medications: dict[str, Medication] | None = None,
) -> MedicationFact | None:
    """A MedicationStatement or a MedicationRequest (US Core) as a medication the patient takes or took.

    Products (SCD/SBD codes) are matched by their ingredient's name in the text when their code is not
    listed. A request counts by its status (active, on-hold, completed, stopped) and intent (an order or
    plan, not a proposal); its time is the dosage's bounds, else the validity period, else authoredOn.
    """
    named = medication_concept(med, medications or {})
    if named is None:
        return None
    keys, text, label = named
    codes = builder.match(keys, text)
    if codes is None:
        return None
    if isinstance(med, MedicationRequest):
        status = _REQUEST_STATUS.get(med.status or "")
        if status is None or med.intent not in _REQUEST_INTENTS:
            return None
        bounds = [
            d.timing.repeat.bounds_period for d in med.dosage_instruction if d.timing and d.timing.repeat
        ]
        period = next((b for b in bounds if b is not None), None)
        if period is None and med.dispense_request is not None:
            period = med.dispense_request.validity_period
        start_text = (period.start if period is not None else None) or med.authored_on
        end_text = period.end if period is not None else None
    else:
        if med.status is None:
            return None
        status = med.status
        period = med.effective_period
        start_text = period.start if period is not None else med.effective_date_time
        end_text = period.end if period is not None else None
    start = _range(start_text)
    end = _range(end_text)
    return MedicationFact(
        reference(med),
        codes,
        label,
        status,
        start.start if start else None,
        end.end if end else None,
        start_text,
        text,
    )


def request_order(
    req: ServiceRequest, builder: RecordBuilder, raw: dict[str, Any] | None
) -> OrderFact | None:
    """A ServiceRequest; ``raw`` is given for the hook's draft orders (which are kept even when uncoded
    for this rule set, since their reason may assert the low back pain context)."""
    codes = builder.match(keys_of(req.code), "")
    reasons = tuple(k for concept in req.reason_code for k in keys_of(concept))
    draft = raw is not None
    if codes is None and not draft:
        return None
    when_text = req.authored_on or req.occurrence_date_time
    when = _range(when_text)
    return OrderFact(
        "ServiceRequest",
        reference(req),
        codes or (),
        _display(req.code),
        "draft" if draft else (req.status or "unknown"),
        when.end if when else None,
        when_text,
        reasons,
        raw,
    )


def report_order(rep: DiagnosticReport, builder: RecordBuilder) -> OrderFact | None:
    codes = builder.match(keys_of(rep.code), "")
    if codes is None or rep.status not in _REPORT_DONE:
        return None
    when_text = rep.effective_date_time or (rep.effective_period.start if rep.effective_period else None)
    when_text = when_text or rep.issued
    when = _range(when_text)
    return OrderFact(
        "DiagnosticReport",
        reference(rep),
        codes,
        _display(rep.code),
        "completed",
        when.end if when else None,
        when_text,
    )
