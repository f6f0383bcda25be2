"""What a patient record is normalised into: facts, medications, orders, the pain episode, evidence.

The constants are the time windows of the knowledge base, Part B.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cds_hooks.fhirtime import FhirInstantRange
from rules.engine.codes.terminology import CodeKey

MEDICATIONS = "@medications"
"""The atom of a rule's needs (``context.Needs``) met by any medication in the record."""
ORDERS = "@orders"
"""... and by any order, result or draft order."""

SNOMED = "http://snomed.info/sct"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

# Knowledge base Part B3: "new" is onset within 14 days; pre-existing if recorded more than 90 days
# earlier; an episode of low back pain is broken by more than 90 days without a record. Part B4: an
# Observation gives the low back pain context for 90 days. Part B1: a completed or stopped medication
# counts for 90 days.
NEW_WINDOW = timedelta(days=14)
PREEXISTING_AFTER = timedelta(days=90)
EPISODE_GAP = timedelta(days=90)
BACK_PAIN_WINDOW = timedelta(days=90)
MEDICATION_RECENT_WINDOW = timedelta(days=90)
CURRENT_OBSERVATION_WINDOW = timedelta(days=90)
# Chronic low back pain is pain lasting 12 weeks or more (NICE NG59; ACP 2017).
CHRONIC_AT_LEAST = timedelta(weeks=12)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One piece of evidence a card cites: what, its value, when, and which resource."""

    label: str
    value: str
    date: str | None = None
    reference: str | None = None
    code: CodeKey | None = None
    site: str = ""  # where it was found ("Perineal structure", "left"): part of the finding

    @property
    def named(self) -> str:
        """The label with the parts of its site the label does not already say: "Numbness (Perineal
        structure)", but "Numbness of the perineum" and "Right foot drop" as they are."""
        said = self.label.lower()
        if "bilateral" in said or "both" in said:
            said += " both sides"
        missing = [part for part in self.site.split(", ") if part and not _mentioned(part, said)]
        return f"{self.label} ({', '.join(missing)})" if missing else self.label


def _mentioned(part: str, said: str) -> bool:
    """Whether a site ("Perineal structure", "left") is already in a label, by the stem of a word."""
    words = [word for word in part.lower().split() if word not in ("structure", "of", "the")]
    return any(word[:5] in said for word in words if len(word) >= 4) or part.lower() in said


@dataclass(slots=True, eq=False)
class Fact:
    """A normalised Observation, Condition or Procedure.

    ``onset`` is when the finding began (Part B3 finding time, as the span a partial date denotes);
    ``last_seen`` is the latest time it is known to have been present (a period's end, or the record).
    """

    resource_type: str
    reference: str
    codes: tuple[CodeKey, ...]
    text: str
    present: bool
    current: bool
    onset: FhirInstantRange | None
    last_seen: datetime | None
    date_text: str | None
    label: str
    body_sites: frozenset[CodeKey] = frozenset()
    laterality: frozenset[str] = frozenset()
    interpretation: frozenset[CodeKey] = frozenset()
    value_codes: frozenset[CodeKey] = frozenset()
    quantity: tuple[float, str | None] | None = None
    reference_high: tuple[float, str | None] | None = None
    ongoing: bool = False  # an active Condition, or a Procedure in progress or with an open period
    onset_age: tuple[float, float] | None = None  # onsetAge / onsetRange in years, dated from the birth date
    site: str = ""  # the body site and side in words, for the card (``normalise.site_words``)

    def evidence(self, value: str | None = None, code: CodeKey | None = None) -> Evidence:
        shown = value if value is not None else ("present" if self.present else "absent")
        return Evidence(self.label, shown, self.date_text, self.reference, code or self.codes[0], self.site)


@dataclass(slots=True, eq=False)
class MedicationFact:
    reference: str
    codes: tuple[CodeKey, ...]
    label: str
    status: str
    start: datetime | None
    end: datetime | None
    date_text: str | None
    text: str = ""

    def evidence(self) -> Evidence:
        return Evidence(self.label, self.status, self.date_text, self.reference, self.codes[0])


@dataclass(slots=True, eq=False)
class OrderFact:
    """A ServiceRequest (draft, active, completed…) or a DiagnosticReport (always 'completed').

    For draft orders of the hook's context, ``raw`` is the resource exactly as the EHR sent it, so a
    system action can return it whole with only an extension added.
    """

    resource_type: str
    reference: str
    codes: tuple[CodeKey, ...]
    label: str
    status: str
    when: datetime | None
    date_text: str | None
    reasons: tuple[CodeKey, ...] = ()
    raw: dict[str, Any] | None = None

    def evidence(self) -> Evidence:
        return Evidence(
            self.label, self.status, self.date_text, self.reference, self.codes[0] if self.codes else None
        )


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
