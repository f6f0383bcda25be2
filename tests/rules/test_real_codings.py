"""Real-world codings (issue 14): each alternative way a real EHR records a finding is recognised, and its
negated twin (refuted, absent, family history, cancelled, a proposal) stays silent.

Every case is a small FHIR record on top of a 45-year-old with low back pain (unless the case replaces the
pain record itself) and names the rule that must fire, or stay silent, on the bundled catalogue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from cds_hooks.request import parse_hook_request
from rules.engine.compiler.ruleset import RuleSet
from rules.engine.evaluation.evaluate import Evaluation, evaluate
from tests.support import builders

NOW = datetime(2026, 11, 21, 10, tzinfo=UTC)
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
PID = "pat-45"


def _condition(
    cid: str,
    system: str,
    code: str,
    display: str | None = None,
    *,
    onset: str | None = "2026-11-18",
    verification: str = "confirmed",
    clinical: str = "active",
    text: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    concept: dict[str, Any] = {"coding": [coding]}
    if text:
        concept["text"] = text
    out: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"system": builders.CLINICAL, "code": clinical}]},
        "verificationStatus": {"coding": [{"system": builders.VERIFICATION, "code": verification}]},
        "code": concept,
        "subject": {"reference": f"Patient/{PID}"},
        **extra,
    }
    if onset:
        out["onsetDateTime"] = onset
    return out


def _text_condition(cid: str, text: str, **extra: Any) -> dict[str, Any]:
    """A Condition an EHR coded only in its own local code system, with its words."""
    return _condition(cid, "urn:oid:1.2.840.114350.1.13.0.1.7.2.696871", "98765", text=text, **extra)


def _quantity(
    oid: str, loinc: str, value: float, unit: str, when: str = "2026-11-20T08:00:00Z"
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": builders.LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{PID}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _med_request(
    mid: str, code: str, display: str, *, status: str = "active", intent: str = "order", **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": intent,
        "subject": {"reference": f"Patient/{PID}"},
        "authoredOn": "2026-05-01",
        **extra,
    }
    if code:
        out["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": code, "display": display}]}
    return out


LBP = builders.condition("lbp-1", "279039007", "2026-11-15", PID, display="Low back pain")


@dataclass
class Case:
    name: str
    rule: str
    fires: bool
    resources: list[dict[str, Any]]
    with_pain: bool = True  # add the SNOMED CT low back pain Condition
    extra_bundle: list[dict[str, Any]] = field(default_factory=list)


RETENTION = builders.finding("ret-1", "267064002", "2026-11-20T08:30:00Z", PID, display="Retention of urine")

CASES = [
    # --- low back pain and radiculopathy coded only in ICD-10-CM, with and without the dot or a display
    Case(
        "icd-m54.50-no-display",
        "rf-ces-sphincter-disturbance",
        True,
        [_condition("lbp-icd", ICD, "M54.50"), RETENTION],
        with_pain=False,
    ),
    Case(
        "icd-m5416-no-dot",
        "rf-ces-sphincter-disturbance",
        True,
        [_condition("lbp-icd", ICD, "M5416"), RETENTION],
        with_pain=False,
    ),
    Case(
        "icd-m54.16-refuted",
        "rf-ces-sphincter-disturbance",
        False,
        [_condition("lbp-icd", ICD, "M54.16", verification="refuted"), RETENTION],
        with_pain=False,
    ),
    # a problem entered today for "chronic back pain" is not an acute episode (chronic = over 12 weeks)
    Case(
        "snomed-134407002-chronic-back-pain-entered-today",
        "ref-pain-management-chronic",
        True,
        [_condition("lbp-chronic", builders.SNOMED, "134407002", onset="2026-11-21")],
        with_pain=False,
    ),
    Case(
        "snomed-38781000087100-chronic-primary-lbp-no-display",
        "ref-pain-management-chronic",
        True,
        [_condition("lbp-chronic", builders.SNOMED, "38781000087100", onset=None)],
        with_pain=False,
    ),
    Case(
        "snomed-134407002-chronic-back-pain-refuted",
        "ref-pain-management-chronic",
        False,
        [_condition("lbp-chronic", builders.SNOMED, "134407002", verification="refuted")],
    ),
    Case(
        "icd-m54.2-neck-pain-is-not-lbp",
        "rf-ces-sphincter-disturbance",
        False,
        [_condition("lbp-icd", ICD, "M54.2", "Cervicalgia"), RETENTION],
        with_pain=False,
    ),
    # --- urinary incontinence as R32, foot drop as M21.371
    Case(
        "icd-r32-incontinence",
        "rf-ces-sphincter-disturbance",
        True,
        [_condition("inc-1", ICD, "R32", "Unspecified urinary incontinence", onset="2026-11-19")],
    ),
    Case(
        "icd-r32-entered-in-error",
        "rf-ces-sphincter-disturbance",
        False,
        [_condition("inc-1", ICD, "R32", onset="2026-11-19", verification="entered-in-error")],
    ),
    Case(
        "icd-n39.3-stress-incontinence-is-not-ces",
        "rf-ces-sphincter-disturbance",
        False,
        [_condition("inc-1", ICD, "N39.3", "Stress incontinence (female) (male)", onset="2026-11-19")],
    ),
    Case(
        "icd-m21.371-foot-drop",
        "rf-acute-motor-deficit",
        True,
        [_condition("fd-1", ICD, "M21.371", "Foot drop, right foot", onset="2026-11-19")],
    ),
    Case(
        "icd-m21.371-foot-drop-resolved-long-ago",
        "rf-acute-motor-deficit",
        False,
        [_condition("fd-1", ICD, "M21.371", onset="2020-01-10", clinical="resolved")],
    ),
    # --- cancer: SNOMED CT concepts beyond the core, ICD-10-CM history, text only
    Case(
        "snomed-363358000-lung-cancer",
        "rf-cancer-history",
        True,
        [_condition("ca-1", builders.SNOMED, "363358000", "Malignant tumor of lung", onset="2024-02-01")],
    ),
    Case(  # by its code alone (no display for the text net): the widened SNOMED CT list
        "snomed-363358000-lung-cancer-code-only",
        "rf-cancer-history",
        True,
        [_condition("ca-1", builders.SNOMED, "363358000", onset="2024-02-01")],
    ),
    Case(
        "snomed-254637007-nsclc-synthea-code-only",
        "rf-cancer-history",
        True,
        [_condition("ca-1", builders.SNOMED, "254637007", onset="2024-02-01")],
    ),
    Case(
        "snomed-92691004-prostate-carcinoma-in-situ-is-not-malignancy",
        "rf-cancer-history",
        False,
        [_condition("ca-1", builders.SNOMED, "92691004", "Carcinoma in situ of prostate (disorder)")],
    ),
    Case(
        "icd-z85.3-breast-cancer-history",
        "rf-cancer-history",
        True,
        [_condition("ca-1", ICD, "Z85.3", onset="2015-06-01", clinical="resolved")],
    ),
    Case(
        "icd-c18.7-colon-cancer-oid-system",
        "rf-cancer-history",
        True,
        [_condition("ca-1", "urn:oid:2.16.840.1.113883.6.90", "C18.7", onset="2025-03-01")],
    ),
    Case(
        "icd-d05.10-in-situ-is-not-malignancy",
        "rf-cancer-history",
        False,
        [_condition("ca-1", ICD, "D05.10", "Intraductal carcinoma in situ of unspecified breast")],
    ),
    Case(
        "text-adenocarcinoma-of-colon",
        "rf-cancer-history",
        True,
        [_text_condition("ca-1", "Adenocarcinoma of colon, on chemoradiation")],
    ),
    Case(
        "text-family-history-of-breast-cancer",
        "rf-cancer-history",
        False,
        [_text_condition("ca-1", "Family history of breast cancer")],
    ),
    Case(
        "text-malignant-hypertension-is-not-cancer",
        "rf-cancer-history",
        False,
        [_text_condition("ca-1", "Malignant hypertension")],
    ),
    Case(
        "icd-c18.7-refuted",
        "rf-cancer-history",
        False,
        [_condition("ca-1", ICD, "C18.7", verification="refuted")],
    ),
    # --- spinal infection as G06.1 (with the fever the rule needs)
    Case(
        "icd-g06.1-epidural-abscess-with-fever",
        "rf-fever-spinal-infection",
        True,
        [
            _condition("abs-1", ICD, "G06.1", "Intraspinal abscess and granuloma"),
            _quantity("t-1", "8310-5", 38.4, "Cel"),
        ],
    ),
    # --- pregnancy as SNOMED CT 72892002 "Normal pregnancy"
    Case(
        "snomed-72892002-normal-pregnancy",
        "dx-pregnancy-related-lbp",
        True,
        [_condition("preg-1", builders.SNOMED, "72892002", "Normal pregnancy", onset="2026-08-01")],
    ),
    Case(
        "snomed-72892002-resolved-pregnancy",
        "dx-pregnancy-related-lbp",
        False,
        [
            _condition(
                "preg-1",
                builders.SNOMED,
                "72892002",
                "Normal pregnancy",
                onset="2025-08-01",
                clinical="resolved",
            )
        ],
    ),
    Case(
        "snomed-72892002-normal-pregnancy-code-only",
        "dx-pregnancy-related-lbp",
        True,
        [_condition("preg-1", builders.SNOMED, "72892002", onset="2026-08-01")],
    ),
    Case(
        "icd-z34-supervision-of-normal-pregnancy",
        "dx-pregnancy-related-lbp",
        True,
        [_condition("preg-1", ICD, "Z34.02", onset="2026-08-01")],
    ),
    # --- temperature by site, weight by method
    Case(
        "loinc-8332-9-rectal-temperature",
        "rf-fever-spinal-infection",
        True,
        [_quantity("t-1", "8332-9", 38.6, "Cel")],
    ),
    Case(
        "loinc-8332-9-rectal-temperature-normal",
        "rf-fever-spinal-infection",
        False,
        [_quantity("t-1", "8332-9", 37.1, "Cel")],
    ),
    Case(
        "loinc-3141-9-measured-weight-loss",
        "rf-unexplained-weight-loss",
        True,
        [
            _quantity("w-1", "3141-9", 80.0, "kg", "2026-07-01T08:00:00Z"),
            _quantity("w-2", "3141-9", 74.0, "kg", "2026-11-10T08:00:00Z"),
        ],
    ),
    Case(
        "loinc-3141-9-stable-weight",
        "rf-unexplained-weight-loss",
        False,
        [
            _quantity("w-1", "3141-9", 80.0, "kg", "2026-07-01T08:00:00Z"),
            _quantity("w-2", "3141-9", 79.5, "kg", "2026-11-10T08:00:00Z"),
        ],
    ),
    # --- MedicationRequest (US Core), by product code and by reference to a Medication
    Case(
        "medicationrequest-prednisone-product",
        "rf-immunosuppression",
        True,
        [_med_request("mr-1", "312617", "predniSONE 5 MG Oral Tablet")],
    ),
    Case(
        "medicationrequest-prednisone-cancelled",
        "rf-immunosuppression",
        False,
        [_med_request("mr-1", "312617", "predniSONE 5 MG Oral Tablet", status="cancelled")],
    ),
    Case(
        "medicationrequest-prednisone-proposal",
        "rf-immunosuppression",
        False,
        [_med_request("mr-1", "312617", "predniSONE 5 MG Oral Tablet", intent="proposal")],
    ),
    Case(
        "medicationrequest-contained-medication",
        "rf-immunosuppression",
        True,
        [
            _med_request(
                "mr-1",
                "",
                "",
                contained=[
                    {
                        "resourceType": "Medication",
                        "id": "m1",
                        "code": {"coding": [{"system": RXNORM, "code": "8640", "display": "prednisone"}]},
                    }
                ],
                medicationReference={"reference": "#m1"},
            )
        ],
    ),
    Case(
        "medicationrequest-bundled-medication",
        "rf-immunosuppression",
        True,
        [
            _med_request("mr-1", "", "", medicationReference={"reference": "Medication/med-9"}),
            {
                "resourceType": "Medication",
                "id": "med-9",
                "code": {"text": "Methylprednisolone 4 MG Oral Tablet"},
            },
        ],
    ),
    # --- code systems sent by OID
    Case(
        "oid-snomed-retention",
        "rf-ces-sphincter-disturbance",
        True,
        [
            {
                **RETENTION,
                "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.96", "code": "267064002"}]},
            }
        ],
    ),
    # --- Condition dated by onsetAge
    Case(
        "onset-age-new-foot-drop",
        "rf-acute-motor-deficit",
        True,
        [
            _condition(
                "fd-1",
                ICD,
                "M21.372",
                onset=None,
                onsetAge={"value": 45, "unit": "years", "system": UCUM, "code": "a"},
            )
        ],
    ),
    Case(
        "onset-age-old-foot-drop",
        "rf-acute-motor-deficit",
        False,
        [
            _condition(
                "fd-1",
                ICD,
                "M21.372",
                onset=None,
                onsetAge={"value": 30, "unit": "years", "system": UCUM, "code": "a"},
            )
        ],
    ),
]


def run(ruleset: RuleSet, case: Case) -> Evaluation:
    resources = [builders.patient(PID, "1981-03-02", "female" if "pregnan" in case.name else "male")]
    resources += ([LBP] if case.with_pain else []) + case.resources
    body = builders.hook_request(pid=PID, prefetch={"all": builders.bundle(*resources)})
    return evaluate(ruleset, parse_hook_request(json.dumps(body)), NOW)


def fired(ruleset: RuleSet, case: Case) -> bool:
    return run(ruleset, case).verdicts[case.rule].status == "fired"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_real_coding(ruleset: RuleSet, case: Case) -> None:
    assert fired(ruleset, case) is case.fires, run(ruleset, case).verdicts[case.rule]


def test_every_positive_case_has_a_silent_twin_for_its_rule() -> None:
    rules_positive = {c.rule for c in CASES if c.fires}
    rules_silent = {c.rule for c in CASES if not c.fires}
    assert rules_positive - rules_silent == set()


def test_a_wrong_expectation_fails(ruleset: RuleSet) -> None:
    """The runner can fail: each case with its expectation flipped does not hold."""
    for case in CASES[:6]:
        flipped = Case(case.name, case.rule, not case.fires, case.resources, case.with_pain)
        assert fired(ruleset, flipped) is not flipped.fires


def test_evidence_recognised_by_text_says_so(ruleset: RuleSet) -> None:
    case = next(c for c in CASES if c.name == "text-adenocarcinoma-of-colon")
    detail = next(c.detail for c in run(ruleset, case).response().cards if "cancer" in c.summary.lower())
    assert "recognised from the text" in detail and "98765 is not in the value set" in detail
