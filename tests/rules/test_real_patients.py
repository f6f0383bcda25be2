"""Real public patients (Synthea and SMART sample data, tests/fixtures/real-patients/README.md) through the
rule engine: every warning or critical card has its clinical reason in the record, and every red flag the
record shows is found (the reviewed expectations in ``expected.json``).

Each record is evaluated at the day after its last dated entry (these records end between 1989 and 2023), at
``patient-view`` and at ``order-select`` with a draft lumbar MRI whose reason is ICD-10-CM M54.50: most of
the Synthea patients have no back pain code, and an imaging order for back pain is how the service would meet
them. The HTTP path (every hook, no 5xx) is in tests/e2e/test_real_patients.py.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_hooks.fhirtime import parse_fhir_datetime
from cds_hooks.request import HookRequest, parse_hook_request
from rules.engine.compiler.ruleset import RuleSet
from rules.engine.evaluation.evaluate import Evaluation, evaluate

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "real-patients"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text())
HOOKS = ("patient-view", "order-select")
_DATES = ("effectiveDateTime", "onsetDateTime", "recordedDate", "authoredOn", "performedDateTime", "issued")


def patients() -> list[Path]:
    return sorted(CORPUS.glob("*.json.gz"))


def load(path: Path) -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(gzip.decompress(path.read_bytes()))
    return bundle


def evaluation_time(bundle: dict[str, Any]) -> datetime:
    """The day after the record's last dated entry."""
    dates = [
        parse_fhir_datetime(value).end
        for entry in bundle["entry"]
        for key in _DATES
        if isinstance(value := entry["resource"].get(key), str)
    ]
    return max(dates) + timedelta(days=1)


def patient_of(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


def request_for(bundle: dict[str, Any], hook: str) -> HookRequest:
    """The hook call an EHR would make for this record (the whole record as one prefetch Bundle)."""
    pid = patient_of(bundle)["id"]
    context: dict[str, Any] = {"patientId": pid, "userId": "Practitioner/corpus"}
    if hook in ("order-select", "order-sign"):
        context["selections"] = ["ServiceRequest/mri-1"]
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
            "resourceType": "ServiceRequest", "id": "mri-1", "status": "draft", "intent": "order",
            "code": {"coding": [{"system": "http://loinc.org", "code": "30679-5"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.50"}]}],
        }}]}  # fmt: skip
    body = {
        "hook": hook,
        "hookInstance": "5d0f7a52-3b8e-4c1a-9f62-7e1d2c3b4a59",
        "context": context,
        "prefetch": {"record": bundle},
    }
    return parse_hook_request(json.dumps(body))


def red_flags(evaluation: Evaluation) -> list[str]:
    """The rules whose warning or critical card is in the answer."""
    return sorted(
        v.rule_id
        for v in evaluation.verdicts.values()
        if v.status == "fired" and v.indicator in ("warning", "critical")
    )


def test_the_corpus_is_complete() -> None:
    assert len(patients()) >= 30
    assert set(EXPECTED) == {p.name.split(".")[0] for p in patients()}
    assert sum(bool(e[h]) for e in EXPECTED.values() for h in HOOKS) >= 20  # red flags are there to find


@pytest.mark.parametrize("path", patients(), ids=lambda p: p.name.split(".")[0])
def test_a_real_patient_gets_the_reviewed_red_flags(ruleset: RuleSet, path: Path) -> None:
    bundle = load(path)
    expected = EXPECTED[path.name.split(".")[0]]
    now = evaluation_time(bundle)
    assert expected["now"] == now.isoformat().replace("+00:00", "Z")
    for hook in HOOKS:
        evaluation = evaluate(ruleset, request_for(bundle, hook), now)
        assert evaluation.errors == {}, evaluation.errors
        found = red_flags(evaluation)
        missed = sorted(set(expected[hook]) - set(found))
        unexplained = sorted(set(found) - set(expected[hook]))
        assert missed == [], f"{hook}: red flags the record shows, not found"
        assert unexplained == [], f"{hook}: warning/critical cards without a reviewed reason"
        if hook == "order-select" and found:  # a red flag: the MRI is never called not appropriate
            ratings = [a.description for a in evaluation.system_actions]
            assert ratings and not any(r.endswith(": not-appropriate") for r in ratings), ratings
            actions = [a for c in evaluation.cards for s in c.suggestions or () for a in s.actions or ()]
            assert all(a.type != "delete" for a in actions)


def test_a_wrong_expectation_fails(ruleset: RuleSet) -> None:
    """The comparison can fail: a red flag the record does not show is reported as missed."""
    path = next(p for p in patients() if EXPECTED[p.name.split(".")[0]]["order-select"])
    bundle = load(path)
    found = red_flags(evaluate(ruleset, request_for(bundle, "order-select"), evaluation_time(bundle)))
    assert "rf-ces-sphincter-disturbance" not in found  # no record in the corpus shows cauda equina
    assert found == sorted(EXPECTED[path.name.split(".")[0]]["order-select"])


def corpus_figures(ruleset: RuleSet) -> dict[str, int]:
    """The figures docs/clinical-coverage.md reports (patients, calls, red flags found)."""
    calls = flags = with_flags = 0
    for path in patients():
        bundle = load(path)
        now = evaluation_time(bundle)
        found = 0
        for hook in HOOKS:
            calls += 1
            found += len(red_flags(evaluate(ruleset, request_for(bundle, hook), now)))
        flags += found
        with_flags += bool(found)
    return {"patients": len(patients()), "calls": calls, "red_flags": flags, "with_flags": with_flags}
