"""Shared record queries (``conditions._answered_once``): rules that ask the record the same question share
one closure, answered once per evaluation. Sharing must never change an answer, so the whole catalogue is
compared, on every embedded test case, with the same catalogue compiled without sharing."""

from __future__ import annotations

from collections import Counter

import pytest

from rules import BUNDLED_CATALOG
from rules.engine.compiler import conditions
from rules.engine.compiler.ruleset import RuleSet, load_ruleset
from rules.engine.evaluation.evaluate import Evaluation, evaluate, prepare
from rules.engine.selftest import case_request

SHARED = "finding: {valueset: saddle-sensory-loss, new: true}"  # asked by two cauda equina rules


def _checks_named(ruleset: RuleSet, text: str) -> dict[str, object]:
    return {
        rule.id: check
        for rule in ruleset.rules
        for check, description in rule.descriptions.items()
        if description.text == text
    }


def test_rules_asking_the_same_question_share_one_check(ruleset: RuleSet) -> None:
    users = _checks_named(ruleset, SHARED)
    assert len(users) >= 2, users
    assert len(set(map(id, users.values()))) == 1
    # an age comparison is cheaper than a lookup: not shared
    ages = [
        c
        for r in ruleset.rules
        for c, d in r.descriptions.items()
        if d.text in ("age: {gt: 50}", "age_at_onset: {gt: 50}")
    ]
    assert len(ages) >= 3
    assert len(set(map(id, ages))) == len(ages)


def test_a_shared_question_is_answered_once_per_evaluation(ruleset: RuleSet) -> None:
    users = _checks_named(ruleset, SHARED)
    rule_id = next(iter(users))
    case = ruleset.by_id[rule_id].tests[0]
    request, now = case_request(case, rule_id, ruleset)
    ctx = prepare(ruleset, request, now)
    check = next(iter(users.values()))
    first = check(ctx)  # type: ignore[operator]
    assert check in ctx.answers
    assert check(ctx) is first  # type: ignore[operator]  # the same answer, not asked again
    fresh = prepare(ruleset, request, now)
    assert check not in fresh.answers  # nothing carries over to the next evaluation


def test_each_rule_still_records_what_it_reads(ruleset: RuleSet) -> None:
    for rule_id in _checks_named(ruleset, SHARED):
        assert "saddle-sensory-loss" in ruleset.by_id[rule_id].reads, rule_id


@pytest.fixture(scope="module")
def unshared() -> RuleSet:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conditions, "_SHARED_QUERIES", frozenset())
        return load_ruleset(BUNDLED_CATALOG)


def _outcome(evaluation: Evaluation) -> tuple[object, ...]:
    verdicts = {
        rule_id: (v.status, v.evidence, v.indicator, v.suppressed_by)
        for rule_id, v in evaluation.verdicts.items()
    }
    cards = [card.to_wire() for card in evaluation.cards]
    return verdicts, cards, evaluation.notes


def test_sharing_changes_no_answer_on_any_embedded_case(ruleset: RuleSet, unshared: RuleSet) -> None:
    assert not any(  # the comparison catalogue really shares nothing
        count > 1 for count in Counter(id(c) for r in unshared.rules for c in r.descriptions).values()
    )
    compared = 0
    for rule in ruleset.rules:
        for case in rule.tests:
            request, now = case_request(case, rule.id, ruleset)
            shared, alone = evaluate(ruleset, request, now), evaluate(unshared, request, now)
            assert _outcome(shared) == _outcome(alone), f"{rule.id} case {case.name}"
            compared += 1
    assert compared >= 100
