"""Reassurance only from sufficient data (issue 15).

A rule whose card reassures (advises against imaging, offers to cancel a draft order, rates it
not-appropriate) declares ``reassures:`` in its file. When its condition holds, the engine asks what might
have been missed before it reassures:

- a Condition from the ``unless_unrecognised`` value set (words or codes that suggest cancer, infection,
  fracture or a neurological deficit) that no value set read by a red-flag rule recognises, or a Condition
  carrying no words and no code the catalogue knows: the red-flag rules could not judge it;
- with ``requires_data: red-flags``, a data source the hook's red-flag rules read that could not be obtained
  from the EHR (the prefetch key unavailable, e.g. a FHIR search answered ``not-supported``).

Any of these is a doubt: the card is replaced by the rule's ``undecided`` card, which shows the doubts as its
evidence, offers no deletion and gives no not-appropriate rating. Without doubts, the reassuring card says
what it checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from rules.engine.codes.terminology import ValueSet
from rules.engine.compiler.context import CompileEnv, EvalContext
from rules.engine.evaluation.cards import CardTemplate
from rules.engine.record.facts import Evidence

if TYPE_CHECKING:
    from rules.engine.model import schema

UNRECOGNISED_WINDOW = timedelta(days=90)
"""A Condition that is not current counts as a doubt while it was present within this long."""

# Alternative representations of one kind of data: the kind is missing only when all of them are.
MEDICATION_TYPES = ("MedicationStatement", "MedicationRequest")
_KINDS = {"MedicationStatement": MEDICATION_TYPES, "MedicationRequest": MEDICATION_TYPES}

# What a card must declare ``reassures:`` for: words that advise against imaging or an order (the delete
# suggestions and PAMA ratings are checked by their keys).
_REASSURING_WORDS = re.compile(
    r"\bno imaging\b|\bimaging (is )?not (recommended|indicated|needed)\b|\bcancel\b|\breassur", re.I
)


@dataclass(frozen=True)
class Reassurance:
    """A compiled ``reassures:`` block."""

    unrecognised: ValueSet | None
    requires_data: bool
    template: CardTemplate  # the undecided card: the rule's card with other words and no deletions
    indicator: str


def compile_reassurance(parsed: schema.RuleFile, card: CardTemplate, env: CompileEnv) -> Reassurance | None:
    """The rule's reassurance block, or None; a card that reassures without one is an error."""
    spec = parsed.reassures
    if spec is None:
        assert parsed.card is not None
        deletes = any(s.remove_draft for s in parsed.card.suggestions)
        if deletes or parsed.pama_rating or _REASSURING_WORDS.search(parsed.card.summary):
            env.report(
                ("card", "summary"),
                "this card reassures (advises against imaging, deletes a draft order or rates it): "
                "declare 'reassures:' so that it is given only on sufficient data",
                "see docs/rules-guide.md, 'Reassurance only from sufficient data'",
            )
        return None
    unrecognised = None
    if spec.unless_unrecognised is not None:
        # Not one of the rule's reads: it does not make the rule's facts "recognised", and Conditions are
        # fetched whole (its codes are made relevant by ``ruleset._relevant_codes``).
        unrecognised = env.valueset(spec.unless_unrecognised, ("reassures", "unless_unrecognised"))
    template = replace(
        card,
        summary=spec.undecided.summary,
        detail=spec.undecided.detail,
        suggestions=tuple(s for s in card.suggestions if s.remove_draft is None),
    )
    return Reassurance(unrecognised, spec.requires_data == "red-flags", template, spec.undecided.indicator)


def missing_kinds(unavailable: dict[str, str], read: frozenset[str]) -> list[str]:
    """The resource types read that could not be obtained, where no alternative representation was."""
    return sorted(
        kind
        for kind in unavailable
        if kind in read and all(other in unavailable for other in _KINDS.get(kind, (kind,)))
    )


def unavailable_note(unavailable: dict[str, str], read: frozenset[str]) -> list[str]:
    """A card's note on the data its rules read that the EHR could not provide (empty: none missing)."""
    missing = missing_kinds(unavailable, read)
    if not missing:
        return []
    gaps = ", ".join(f"{kind} ({unavailable[kind]})" for kind in missing)
    return [
        f"Not available from the EHR: {gaps}. This card was decided without it: what it would have "
        "shown may be missing here."
    ]


def doubts(reassurance: Reassurance, ctx: EvalContext) -> list[Evidence]:
    """What makes the data insufficient to reassure (empty: sufficient)."""
    record = ctx.record
    found: list[Evidence] = []
    if reassurance.unrecognised is not None:
        recognised = {id(fact) for name in ctx.recognised for fact in record.members().get(name, ())}
        for fact in record.facts_in(reassurance.unrecognised):
            if fact.resource_type != "Condition" or not fact.present or id(fact) in recognised:
                continue
            if not (fact.current or record.seen_within(fact, UNRECOGNISED_WINDOW)):
                continue
            evidence = fact.evidence()
            found.append(
                Evidence(
                    "Condition not recognised as a red flag or its absence",
                    f"{fact.label} ({evidence.value})",
                    evidence.date,
                    evidence.reference,
                    evidence.code,
                )
            )
        found.extend(record.unnamed)
    if reassurance.requires_data:
        for kind in missing_kinds(record.unavailable, ctx.screening[0]):
            found.append(Evidence(f"{kind} not available", record.unavailable[kind]))
    return found


def checked_line(ctx: EvalContext) -> str:
    """What a reassuring card checked: the red-flag rules and the records received, and what was not
    available (an alternative representation of the same data was)."""
    record = ctx.record
    shown = ("Patient", "Condition", "Observation", "Procedure", *MEDICATION_TYPES, "ServiceRequest")
    counts = [f"{record.received[kind]} {kind}" for kind in shown if record.received.get(kind)]
    checked = f"{ctx.screening[1]} red-flag rules over " + (", ".join(counts) if counts else "no records")
    gaps = [f"{kind} ({why})" for kind, why in sorted(record.unavailable.items())]
    return (
        "No red flag found in the coded record received (checked: "
        + checked
        + (f"; not available: {', '.join(gaps)}" if gaps else "")
        + ")."
    )
