"""Prefetch templates: tokens, rendering, and per-key satisfaction (CDS Hooks 2.0 "Prefetch Template")."""

from __future__ import annotations

import pytest

from cds_hooks.errors import PrefetchTemplateError
from cds_hooks.prefetch import KeyState, assess_prefetch, check_template, render_prefetch
from cds_hooks.resources import Bundle, BundleLink, OperationOutcome, Patient

CONTEXT = {"patientId": "p1", "userId": "Practitioner/u9", "encounterId": "e3"}


def test_render_context_and_user_tokens() -> None:
    assert render_prefetch("Patient/{{context.patientId}}", CONTEXT) == "Patient/p1"
    assert render_prefetch("Encounter/{{ context.encounterId }}", CONTEXT) == "Encounter/e3"
    assert render_prefetch("Practitioner/{{userPractitionerId}}", CONTEXT) == "Practitioner/u9"


@pytest.mark.parametrize("template", ["Patient/{{context.missing}}", "X/{{userPatientId}}"])
def test_unfillable_tokens_raise(template: str) -> None:
    with pytest.raises(PrefetchTemplateError):
        render_prefetch(template, CONTEXT)


def test_only_cds_hooks_2_tokens_are_allowed() -> None:
    check_template("Observation?patient={{context.patientId}}&code=http://loinc.org|8310-5")
    with pytest.raises(PrefetchTemplateError):
        check_template("Observation?date=gt{{today()}}")
    with pytest.raises(PrefetchTemplateError):
        check_template("Medication/{{context.medication.id}}")


def test_assess_each_key() -> None:
    patient = Patient(resourceType="Patient", id="p1")
    complete = Bundle(resourceType="Bundle")
    paged = Bundle(resourceType="Bundle", link=(BundleLink(relation="next", url="http://x/fhir/Obs?p=2"),))
    outcome = OperationOutcome(resourceType="OperationOutcome")
    states = assess_prefetch(
        ["patient", "absent", "none", "error", "complete", "paged"],
        {"patient": patient, "none": None, "error": outcome, "complete": complete, "paged": paged},
    )
    assert states == {
        "patient": KeyState.SATISFIED,
        "absent": KeyState.MISSING,
        "none": KeyState.NO_DATA,
        "error": KeyState.MISSING,
        "complete": KeyState.SATISFIED,
        "paged": KeyState.PAGINATED,
    }
