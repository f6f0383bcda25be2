"""Appropriate-use ratings of draft imaging orders as system actions (Argonaut "CDS Hooks for PAMA").

Each rated draft ServiceRequest is returned whole, unchanged but for the rating extensions, in an
``update`` action. The rating comes from the verdict of the rule that carries ``pama_rating``:
fired (imaging not indicated) → ``not-appropriate``; suppressed by a red flag → ``appropriate``; silent
(no criterion of the rule applies, e.g. pain for more than 6 weeks) → ``no-criteria-apply``.

The ``pama-rating-qcdsm-consulted`` extension (a CMS G-code for a qualified CDS mechanism) is not sent:
this service is not a CMS-qualified mechanism and has no G-code to claim.
"""

from __future__ import annotations

from typing import Any

from cds_hooks.response import Action
from rules.engine.evaluation.cards import stable_uuid
from rules.engine.record.facts import OrderFact

RATING_EXTENSION = "http://fhir.org/argonaut/Extension/pama-rating"
RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
CONSULT_EXTENSION = "http://fhir.org/argonaut/Extension/pama-rating-consult-id"
RATING_BY_VERDICT = {"fired": "not-appropriate", "suppressed": "appropriate", "silent": "no-criteria-apply"}


def rating_action(draft: OrderFact, rating: str, hook_instance: str) -> Action | None:
    """An update action attaching ``rating`` to the draft order as sent; None if it was not sent whole."""
    if not draft.raw:
        return None
    resource: dict[str, Any] = dict(draft.raw)
    kept = [
        e
        for e in resource.get("extension", [])
        if not (isinstance(e, dict) and e.get("url") in (RATING_EXTENSION, CONSULT_EXTENSION))
    ]
    consult = stable_uuid(hook_instance, draft.reference, "rating")
    resource["extension"] = [
        *kept,
        {
            "url": RATING_EXTENSION,
            "valueCodeableConcept": {"coding": [{"system": RATING_SYSTEM, "code": rating}]},
        },
        {"url": CONSULT_EXTENSION, "valueUri": f"urn:uuid:{consult}"},
    ]
    return Action(
        type="update", description=f"Appropriate use rating of {draft.label}: {rating}", resource=resource
    )
