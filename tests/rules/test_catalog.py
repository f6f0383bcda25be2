"""The test cases embedded in the rule files, one pytest test each (``pytest -k cauda-equina`` works)."""

from __future__ import annotations

import pytest

from rules.engine.compiler.ruleset import RuleSet
from rules.engine.model.schema import Expectation
from rules.engine.selftest import EXPECTATION_CHECKS, check_expectations, run_case
from tests.support.catalogue import bundled_ruleset

_CATALOG = bundled_ruleset()
CASES = [(rule.id, index) for rule in _CATALOG.rules for index in range(len(rule.tests))]


@pytest.mark.parametrize(
    ("rule_id", "index"), CASES, ids=[f"{rid}::{_CATALOG.by_id[rid].tests[i].name}" for rid, i in CASES]
)
def test_embedded_case(ruleset: RuleSet, rule_id: str, index: int) -> None:
    result = run_case(ruleset, ruleset.by_id[rule_id], index)
    assert result.ok, result.report()


def test_every_rule_has_both_directions(ruleset: RuleSet) -> None:
    for rule in ruleset.rules:
        directions = {case.expect.fired for case in rule.tests}
        assert directions == {True, False}, rule.id


def test_a_wrong_expectation_fails(ruleset: RuleSet) -> None:
    """The runner must be able to fail: flip each case's expectation and every case must report failures."""
    for rule in ruleset.rules:
        for index, case in enumerate(rule.tests):
            result = run_case(ruleset, rule, index)
            assert result.evaluation is not None
            flipped = case.model_copy(
                update={"expect": case.expect.model_copy(update={"fired": not case.expect.fired})}
            )
            assert check_expectations(flipped, rule.id, result.evaluation, ruleset.terminology), (
                rule.id,
                case.name,
            )


def test_xfail_cases_must_fail(ruleset: RuleSet) -> None:
    rule = ruleset.by_id["rf-ces-sphincter-disturbance"]
    passing = rule.tests[0].model_copy(update={"xfail": "pretend gap"})
    patched = type(rule)(**{**rule.__dict__, "tests": (passing,)})
    result = run_case(ruleset, patched, 0)
    assert not result.failures
    assert not result.ok
    assert "unexpectedly passed" in result.report()


CES = ("rf-ces-sphincter-disturbance", 0)  # fires critical: a referral and an MRI, one card
ORDER = (
    "test-imaging-order-not-indicated",
    0,
)  # rates a lumbar MRI draft not-appropriate, offers its removal
# For each field an embedded case may expect: cases that pass, and wrong values for that field alone.
WRONG: dict[str, list[tuple[tuple[str, int], object]]] = {
    "fired": [(CES, False), (("rf-ces-sphincter-disturbance", 1), True)],
    "indicator": [(CES, "warning"), (CES, "info")],
    "suggestions": [(CES, ["loinc:30679-5 routine"]), (CES, ["loinc:24970-6"])],
    "absent_suggestions": [(CES, ["loinc:30679-5"])],
    "suppressed_by": [(CES, "adv-self-management-nonspecific")],
    "rating": [
        (ORDER, "appropriate"),
        (ORDER, "none"),
        (("test-imaging-order-not-indicated", 4), "no-criteria-apply"),  # a non-imaging draft
        (("rf-known-spinal-infection", 1), "not-appropriate"),
    ],
    "removes_draft": [(ORDER, False), (("rf-known-spinal-infection", 1), True)],
    "summary_contains": [(CES, "osteoporosis")],
    "detail_contains": [(CES, ["Observation/does-not-exist"])],
    "cards": [(CES, 3), (CES, 0)],
}


def test_every_expectation_field_has_a_checker_and_wrong_values() -> None:
    fields = set(Expectation.model_fields)
    assert set(EXPECTATION_CHECKS) == fields
    assert set(WRONG) == fields


@pytest.mark.parametrize(
    ("field", "where", "value"),
    [(name, where, value) for name, cases in WRONG.items() for where, value in cases],
    ids=[f"{name}={value}" for name, cases in WRONG.items() for _, value in cases],
)
def test_a_wrong_value_of_each_field_fails(
    ruleset: RuleSet, field: str, where: tuple[str, int], value: object
) -> None:
    """The case passes as written; with this one field wrong, ``lumbar test`` reports it."""
    rule_id, index = where
    rule = ruleset.by_id[rule_id]
    result = run_case(ruleset, rule, index)
    assert result.evaluation is not None and result.ok, result.report()
    case = rule.tests[index]
    wrong = case.model_copy(update={"expect": case.expect.model_copy(update={field: value})})
    failures = check_expectations(wrong, rule.id, result.evaluation, ruleset.terminology)
    assert failures, (field, value)
