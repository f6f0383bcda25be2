"""The test cases embedded in the rule files, one pytest test each (``pytest -k cauda-equina`` works)."""

from __future__ import annotations

import pytest

from rules import BUNDLED_CATALOG
from rules.engine.ruleset import RuleSet, load_ruleset
from rules.engine.selftest import check_expectations, run_case

_CATALOG = load_ruleset(BUNDLED_CATALOG)
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


def test_wrong_details_fail_too(ruleset: RuleSet) -> None:
    rule = ruleset.by_id["rf-ces-sphincter-disturbance"]
    result = run_case(ruleset, rule, 0)
    assert result.evaluation is not None and result.ok
    base = rule.tests[0].expect
    wrong = [
        {"indicator": "warning"},
        {"suggestions": ["loinc:30679-5 routine"]},
        {"suggestions": ["loinc:24970-6"]},
        {"absent_suggestions": ["loinc:30679-5"]},
        {"cards": 3},
        {"summary_contains": "osteoporosis"},
        {"detail_contains": ["Observation/does-not-exist"]},
        {"suppressed_by": "adv-self-management-nonspecific"},
    ]
    for change in wrong:
        case = rule.tests[0].model_copy(update={"expect": base.model_copy(update=change)})
        assert check_expectations(case, rule.id, result.evaluation, ruleset.terminology), change


def test_xfail_cases_must_fail(ruleset: RuleSet) -> None:
    rule = ruleset.by_id["rf-ces-sphincter-disturbance"]
    passing = rule.tests[0].model_copy(update={"xfail": "pretend gap"})
    patched = type(rule)(**{**rule.__dict__, "tests": (passing,)})
    result = run_case(ruleset, patched, 0)
    assert not result.failures
    assert not result.ok
    assert "unexpectedly passed" in result.report()


@pytest.mark.parametrize(
    ("rule_id", "index", "change"),
    [
        ("test-imaging-order-not-indicated", 0, {"rating": "appropriate"}),
        ("test-imaging-order-not-indicated", 0, {"rating": "none"}),
        ("test-imaging-order-not-indicated", 0, {"removes_draft": False}),
        ("test-imaging-order-not-indicated", 4, {"rating": "no-criteria-apply"}),  # a non-imaging draft
        ("rf-known-spinal-infection", 1, {"removes_draft": True}),
        ("rf-known-spinal-infection", 1, {"rating": "not-appropriate"}),
    ],
)
def test_wrong_ratings_and_deletions_fail(
    ruleset: RuleSet, rule_id: str, index: int, change: dict[str, object]
) -> None:
    """``rating`` and ``removes_draft`` are checked: a wrong one is reported (issue 15, 16)."""
    rule = ruleset.by_id[rule_id]
    result = run_case(ruleset, rule, index)
    assert result.evaluation is not None and result.ok
    case = rule.tests[index].model_copy(update={"expect": rule.tests[index].expect.model_copy(update=change)})
    assert check_expectations(case, rule.id, result.evaluation, ruleset.terminology), change
