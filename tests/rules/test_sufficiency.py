"""Reassurance only from sufficient data (issue 15): no card of the bundled catalogue rates a draft order
not-appropriate, offers to delete it, or advises against imaging while the record holds a Condition the
red-flag rules could not judge, or while a data source they read was unavailable.

Every embedded case in which a reassuring card is given is run again with one doubt added; the card must
then be its undecided form. Each case first shows the reassuring card is there without the doubt, so the
checks can fail (and ``test_a_wrong_expectation_fails`` shows they do).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from cds_hooks.response import Card
from rules.engine.compiler.ruleset import CompiledRule, load_ruleset
from rules.engine.evaluation.evaluate import Evaluation, evaluate
from rules.engine.model import schema
from rules.engine.model.diagnostics import RuleSetError
from rules.engine.selftest import case_request
from tests.support.catalogue import bundled_ruleset

CATALOG = bundled_ruleset()
ACTIVE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
}
EPIC = "urn:oid:1.2.840.114350.1.13.0.1.7.2.696871"
DOUBTFUL_CONDITIONS = {
    "icd-neoplasm-uncertain": {
        "coding": [
            {
                "system": "http://hl7.org/fhir/sid/icd-10-cm",
                "code": "D48.0",
                "display": "Neoplasm of uncertain behavior of bone",
            }
        ]
    },
    "words-epidural-abscess-query": {
        "coding": [{"system": EPIC, "code": "77"}],
        "text": "Query epidural abscess",
    },
    "words-pathological-fracture": {
        "coding": [{"system": EPIC, "code": "78"}],
        "text": "Pathological fracture, site to be confirmed",
    },
    "no-words-unknown-code": {"coding": [{"system": EPIC, "code": "79"}]},
}
# Words that advise against imaging or an order, as a reader of the card would take them.
REASSURING = re.compile(r"\bno imaging\b|imaging not recommended|\bcancel\b|\breassur", re.I)


def _reassuring(rule: CompiledRule) -> bool:
    card = rule.card
    return card is not None and bool(
        rule.pama_rating is not None
        or any(s.remove_draft is not None for s in card.suggestions)
        or REASSURING.search(card.summary)
    )


def test_every_reassuring_card_declares_reassurance() -> None:
    found = [rule.id for rule in CATALOG.rules if _reassuring(rule)]
    assert len(found) >= 3  # the no-imaging advice, the order warning, the age card at least
    assert [r for r in found if CATALOG.by_id[r].reassurance is None] == []


def _given_cases() -> list[tuple[str, int]]:
    """(rule, case) where the rule's reassuring card is given."""
    out = []
    for rule in CATALOG.rules:
        if rule.reassurance is None:
            continue
        for index, case in enumerate(rule.tests):
            evaluation = _run(rule, case)
            if _own_card(evaluation, rule) is not None:
                out.append((rule.id, index))
    return out


def _run(rule: CompiledRule, case: schema.TestCase, unavailable: dict[str, str] | None = None) -> Evaluation:
    request, now = case_request(case, rule.id, CATALOG)
    if unavailable:
        request = request.with_prefetch(request.prefetch, unavailable)
    return evaluate(CATALOG, request, now)


def _own_card(evaluation: Evaluation, rule: CompiledRule) -> Card | None:
    """The rule's reassuring card as written (not its undecided form)."""
    assert rule.card is not None
    return next((c for c in evaluation.cards if c.summary == rule.card.summary), None)


def _reassures(evaluation: Evaluation, rule: CompiledRule) -> list[str]:
    """Every way the response reassures."""
    problems = []
    if _own_card(evaluation, rule) is not None:
        problems.append("the reassuring card is given")
    for card in evaluation.cards:
        if any(a.type == "delete" for s in card.suggestions for a in s.actions):
            problems.append(f"{card.summary!r} offers to delete a draft order")
    if b"not-appropriate" in orjson.dumps([a.to_wire() for a in evaluation.system_actions]):
        problems.append("a draft order is rated not-appropriate")
    return problems


def _with_condition(case: schema.TestCase, concept: dict[str, Any]) -> schema.TestCase:
    record = schema.RecordSpec.model_validate(
        {"fhir": {"resourceType": "Condition", "id": "doubt", "clinicalStatus": ACTIVE, "code": concept}}
    )
    return case.model_copy(update={"records": [*case.records, record]})


GIVEN = _given_cases()


@pytest.mark.parametrize(("rule_id", "index"), GIVEN, ids=[f"{r}-{i}" for r, i in GIVEN])
@pytest.mark.parametrize("doubt", sorted(DOUBTFUL_CONDITIONS))
def test_no_reassurance_beside_an_unrecognised_condition(rule_id: str, index: int, doubt: str) -> None:
    rule = CATALOG.by_id[rule_id]
    case = rule.tests[index]
    assert _reassures(_run(rule, case), rule), "without the doubt the card reassures"
    doubted = _run(rule, _with_condition(case, DOUBTFUL_CONDITIONS[doubt]))
    red_flags = [c for c in doubted.cards if c.indicator != "info" and _is_red_flag(c)]
    if red_flags:  # a red-flag value set recognised it: its rule judged it, and its card is shown
        assert "not-appropriate" not in str([a.to_wire() for a in doubted.system_actions])
        return
    assert _reassures(doubted, rule) == []
    verdict = doubted.verdicts[rule_id]
    assert verdict.status != "fired" or verdict.undecided


def _is_red_flag(card: Card) -> bool:
    rule = CATALOG.by_id.get(card.source.topic.code if card.source.topic else "")
    return rule is not None and rule.category == "red-flag"


@pytest.mark.parametrize(("rule_id", "index"), GIVEN, ids=[f"{r}-{i}" for r, i in GIVEN])
def test_no_reassurance_when_a_red_flag_source_is_unavailable(rule_id: str, index: int) -> None:
    rule = CATALOG.by_id[rule_id]
    assert rule.reassurance is not None
    case = rule.tests[index]
    if not rule.reassurance.requires_data:
        pytest.skip(f"{rule_id} withholds only on unrecognised conditions")
    for kind in sorted(CATALOG.screening(case.hook)[0] - {"MedicationRequest"}):
        missing = {kind: "answered 404 not-supported"}
        if kind == "MedicationStatement":  # one kind of data: missing only when both lists are
            missing["MedicationRequest"] = "answered 404 not-supported"
        evaluation = _run(rule, case, missing)
        assert _reassures(evaluation, rule) == [], kind
        card = next(c for c in evaluation.cards if c.source.topic and c.source.topic.code == rule_id)
        assert f"{kind} not available" in (card.detail or ""), kind


def test_one_medication_list_missing_still_reassures() -> None:
    """A US Core server without MedicationStatement search still has MedicationRequest: that is enough, and
    the card says what was not available."""
    rule = CATALOG.by_id["test-no-imaging-acute-uncomplicated"]
    index = next(i for r, i in GIVEN if r == rule.id)
    evaluation = _run(rule, rule.tests[index], {"MedicationStatement": "answered 404 not-supported"})
    card = _own_card(evaluation, rule)
    assert card is not None
    assert "not available: MedicationStatement (answered 404 not-supported)" in (card.detail or "")


def test_a_wrong_expectation_fails() -> None:
    """The check above sees a reassurance when there is one."""
    rule_id, index = next((r, i) for r, i in GIVEN if r == "test-imaging-order-not-indicated")
    rule = CATALOG.by_id[rule_id]
    problems = _reassures(_run(rule, rule.tests[index]), rule)
    assert "the reassuring card is given" in problems
    assert any("rated not-appropriate" in p for p in problems)
    assert any("delete" in p for p in problems)


def test_a_reassuring_card_without_reassures_is_refused(catalog: Path) -> None:
    path = catalog / "test-imaging-order-not-indicated.yaml"
    text = path.read_text()
    start = text.index("reassures:")
    end = text.index("\ncard:")
    path.write_text(text[:start] + text[end + 1 :])
    with pytest.raises(RuleSetError) as caught:
        load_ruleset(catalog)
    assert any(
        "test-imaging-order-not-indicated.yaml" in d.render() and "declare 'reassures:'" in d.render()
        for d in caught.value.diagnostics
    )


def test_the_unrecognised_value_set_recognises_nothing() -> None:
    """A Condition only the doubt value set knows is not 'recognised' by the red-flag rules, though a
    red-flag rule (the age card) reassures with it."""
    assert "possible-red-flag" not in CATALOG.recognised
    assert "malignancy" in CATALOG.recognised
