"""Rule pre-selection (``CompiledRule.needs`` / ``may_fire``): the engine skips a rule whose ``when`` needs
value sets the record does not touch. Skipping must never change an answer, so it is checked against every
rule's own check on every embedded test case of the catalogue."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson

from cds_hooks.request import parse_hook_request
from rules.engine.codes.terminology import ICD10CM, ValueSet, icd_compact, icd_in
from rules.engine.compiler.conditions import _needs
from rules.engine.compiler.ruleset import RuleSet
from rules.engine.evaluation.evaluate import evaluate, prepare
from rules.engine.model import schema
from rules.engine.record.facts import MEDICATIONS, ORDERS, Fact
from rules.engine.selftest import case_request
from tests.support import builders

NOW = datetime(2026, 11, 21, 10, tzinfo=UTC)


def _cond(data: object) -> schema.Condition:
    return schema.Condition.model_validate(data)


def test_needs_of_each_connective() -> None:
    finding = {"finding": {"valueset": "a"}}
    assert _needs(_cond(finding), []) == (frozenset({"a"}),)
    assert _needs(_cond({"finding": {"valueset": ["a", "b"]}}), []) == (frozenset({"a", "b"}),)
    assert _needs(_cond({"medication": {"valueset": "m"}}), []) == (frozenset({MEDICATIONS}),)
    assert _needs(_cond({"order": {"valueset": "o", "status": ["active"]}}), []) == (frozenset({ORDERS}),)
    assert _needs(_cond({"age": {"gte": 50}}), []) == ()
    a, b = (frozenset({"a"}),), (frozenset({"b"}), frozenset({"c", "d"}))
    both = {"all": [finding, finding]}
    assert _needs(_cond(both), [a, b]) == (*a, *b)  # all: every child's clauses
    either = {"any": [finding, finding]}
    assert _needs(_cond(either), [a, b]) == (frozenset({"a", "b"}),)  # any: the smallest clause of each
    assert _needs(_cond(either), [a, ()]) == ()  # a child that needs nothing: the whole needs nothing
    assert _needs(_cond({"not": finding}), [a]) == ()  # true exactly when the finding is missing
    two = {"at_least": {"count": 2, "of": [finding, finding, finding]}}
    assert _needs(_cond(two), [a, b, a]) == (frozenset({"a", "b"}),)


def test_every_rule_reads_its_needs_from_the_record(ruleset: RuleSet) -> None:
    """Most rules of the bundled catalogue can be skipped for a record that lacks their findings."""
    gated = [rule.id for rule in ruleset.rules if rule.needs]
    assert len(gated) >= len(ruleset.rules) // 2, gated


def _cases(ruleset: RuleSet) -> list[tuple[str, int]]:
    return [(rule.id, index) for rule in ruleset.rules for index in range(len(rule.tests))]


def test_skipping_never_hides_a_rule_that_would_be_true(ruleset: RuleSet) -> None:
    """On every embedded case: a rule the record does not meet the needs of is false when run anyway."""
    checked = skipped = 0
    for rule_id, index in _cases(ruleset):
        case = ruleset.by_id[rule_id].tests[index]
        request, now = case_request(case, rule_id, ruleset)
        ctx = prepare(ruleset, request, now)
        present = ctx.record.present()
        for rule in ruleset.rules:
            checked += 1
            if not rule.may_fire(present):
                skipped += 1
                assert rule.check(ctx) is None, f"{rule.id} skipped but true in {rule_id} case {case.name}"
    assert skipped > checked // 3  # the pre-selection does skip (else this test proves nothing)


def _coded_in(fact: Fact, vs: ValueSet) -> bool:
    """Membership by the fact's codes (plain, body-site-qualified or ICD-10-CM hierarchy) alone."""
    icd = [icd_compact(code) for system, code in fact.codes if system == ICD10CM]
    return bool(
        set(fact.codes) & vs.codes
        or any(key in vs.sited and fact.body_sites & vs.sited[key] for key in fact.codes)
        or any(icd_in(code, span) for code in icd for span in vs.icd)
    )


def _belongs(fact: Fact, vs: ValueSet, coded_anywhere: bool) -> bool:
    """Value-set membership by its definition, one value set at a time (the index computes it in one pass):
    the text is the safety net only for a fact whose codes made it a member of no value set at all."""
    return _coded_in(fact, vs) or bool(
        not coded_anywhere
        and vs.text is not None
        and fact.text
        and fact.resource_type in vs.text_in
        and vs.text.search(fact.text)
        and not (vs.negation is not None and vs.negation.search(fact.text))
    )


def test_members_follow_the_value_set_definitions(ruleset: RuleSet) -> None:
    """The one-pass index gives each value set exactly the facts its codes, body-site-qualified codes and
    text patterns admit, and ``present`` names exactly the value sets with members."""
    checked = 0
    for rule_id, index in _cases(ruleset)[::3]:
        case = ruleset.by_id[rule_id].tests[index]
        request, now = case_request(case, rule_id, ruleset)
        record = prepare(ruleset, request, now).record
        present = record.present()
        coded = {
            id(fact): any(_coded_in(fact, vs) for vs in ruleset.valuesets.values()) for fact in record.facts
        }
        for name, vs in ruleset.valuesets.items():
            expected = [fact for fact in record.facts if _belongs(fact, vs, coded[id(fact)])]
            assert record.facts_in(vs) == expected, (name, rule_id, case.name)
            assert (name in present) == bool(expected), (name, rule_id, case.name)
            checked += bool(expected)
    assert checked > 50  # the cases do put facts in many value sets


def test_a_rule_whose_needs_are_missing_is_not_run(ruleset: RuleSet) -> None:
    """The skip happens: with only low back pain on record, a rule needing other findings is not run (its
    broken check raises nothing), while the same broken check on a rule that can fire is run and reported."""
    body = builders.hook_request(prefetch={"all": builders.bundle(builders.patient(), _pain())})
    request = parse_hook_request(orjson.dumps(body))
    present = prepare(ruleset, request, NOW).record.present()
    skipped = next(r for r in ruleset.rules if "patient-view" in r.hooks and not r.may_fire(present))
    running = next(r for r in ruleset.rules if "patient-view" in r.hooks and r.may_fire(present))

    def broken(ctx: object) -> None:
        raise RuntimeError("broken check")

    for rule, reported in ((skipped, False), (running, True)):
        patched = replace(ruleset, by_id={**ruleset.by_id, rule.id: replace(rule, check=broken)})
        assert (rule.id in evaluate(patched, request, NOW).errors) is reported, rule.id


def _pain() -> dict[str, object]:
    onset = (NOW - timedelta(days=6)).date().isoformat()
    return builders.condition("lbp-1", "279039007", onset, display="Low back pain")
