"""The rule language without repetition: named conditions (``define:``, ``is:``) and precedence tiers
(``tier:``, ``precedence.yaml``), each problem located where it is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.engine.compiler.ruleset import load_ruleset
from rules.engine.model.diagnostics import RuleSetError
from tests.support.files import edit, has_error, line_of


def _errors(folder: Path) -> list[str]:
    with pytest.raises(RuleSetError) as caught:
        load_ruleset(folder)
    return [d.render() for d in caught.value.diagnostics if d.severity == "error"]


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


# ---- named conditions ------------------------------------------------------------------------------


def test_a_named_condition_reads_as_if_written_where_it_is_used(catalog: Path) -> None:
    ruleset = load_ruleset(catalog)
    rule = ruleset.by_id["rf-fever-spinal-infection"]
    assert {"body-temperature", "fever-symptom"} <= rule.reads  # so the prefetch asks for them
    top = rule.descriptions[rule.check]
    assert top.text == "is fever"
    (inner,) = top.children
    assert rule.descriptions[inner].text == "any of"
    assert [rule.descriptions[c].text.split(":")[0] for c in rule.descriptions[inner].children] == [
        "quantity",
        "finding",
    ]
    # the same definition used by another rule asks the record the same shared question
    kidney = ruleset.by_id["dx-kidney-stone-referred-pain"]
    assert {"body-temperature", "fever-symptom"} <= kidney.reads


def test_a_mistake_inside_a_shared_definition_is_reported_once_at_its_line(catalog: Path) -> None:
    definitions = catalog / "definitions.yaml"
    edit(definitions, "valueset: fever-symptom", "valueset: fever-symptm")
    line = line_of(definitions, "fever-symptm")
    errors = _errors(catalog)
    about = [e for e in errors if "fever-symptm" in e]
    assert len(about) == 1, errors  # two rules use it: reported once, where it is written
    assert f"definitions.yaml:{line}:" in about[0]
    assert "did you mean 'fever-symptom'?" in about[0]


def test_definitions_that_use_each_other_are_a_cycle(catalog: Path) -> None:
    _append(
        catalog / "definitions.yaml",
        "  loop-a:\n    description: the first half of a loop\n    when: {is: loop-b}\n"
        "  loop-b:\n    description: the second half of a loop\n    when: {not: {is: loop-a}}\n",
    )
    errors = _errors(catalog)
    cycles = [e for e in errors if "cycle in definitions" in e]
    assert len(cycles) == 1 and "loop-a -> loop-b -> loop-a" in cycles[0], errors


def test_a_file_may_not_redefine_a_shared_name(catalog: Path) -> None:
    rule = catalog / "rf-young-onset.yaml"
    edit(
        rule,
        "when:",
        "define:\n  fever:\n    description: a local fever that would hide the shared one\n"
        "    when: {finding: {valueset: fever-symptom}}\nwhen:",
    )
    errors = _errors(catalog)
    assert has_error(
        errors, f"rf-young-onset.yaml:{line_of(rule, '  fever:')}:", "'fever' is already defined"
    )


def test_unused_definitions_are_warnings(catalog: Path) -> None:
    _append(
        catalog / "definitions.yaml",
        "  never-used:\n    description: a definition no rule names\n    when: {age: {gt: 90}}\n",
    )
    edit(
        catalog / "rf-young-onset.yaml",
        "when:",
        "define:\n  also-unused:\n    description: a local definition no condition names\n"
        "    when: {age: {gt: 90}}\nwhen:",
    )
    warnings = [d.render() for d in load_ruleset(catalog).warnings]
    assert any("definitions.yaml" in w and "'never-used' is not used by any rule" in w for w in warnings)
    assert any("rf-young-onset.yaml" in w and "'also-unused' is not used" in w for w in warnings)


def test_a_red_flag_depending_on_itself_through_a_definition_is_located_at_its_is(catalog: Path) -> None:
    _append(
        catalog / "definitions.yaml",
        "  some-red-flag:\n    description: some red flag holds at warning\n"
        "    when: {red_flags: {min_indicator: warning}}\n",
    )
    rule = catalog / "rf-young-onset.yaml"
    edit(rule, "    - is: acute-episode", "    - is: acute-episode\n    - is: some-red-flag")
    errors = _errors(catalog)
    where = f"rf-young-onset.yaml:{line_of(rule, 'is: some-red-flag')}:"
    assert has_error(errors, where, "depend on itself"), errors


def test_a_definition_with_a_schema_error_is_located_and_the_others_still_work(catalog: Path) -> None:
    definitions = catalog / "definitions.yaml"
    edit(definitions, "    when: {episode: {gt: 12w}}", "    when: {episode: {gt: 12w}, age: {gt: 3}}")
    errors = _errors(catalog)
    line = line_of(definitions, "age: {gt: 3}")
    assert any(f":{line}:" in e and "a condition has 2 keys" in e for e in errors), errors
    assert not any("unknown definition 'acute-episode'" in e for e in errors), errors


# ---- precedence tiers ------------------------------------------------------------------------------


def test_a_rule_joins_a_tier_with_one_line(catalog: Path) -> None:
    before = dict(load_ruleset(catalog).by_id["rf-ces-sphincter-disturbance"].suppresses)
    assert before["test-startback-screening"] == "critical"
    edit(catalog / "test-startback-screening.yaml", "tier: routine-care\n", "")
    after = load_ruleset(catalog).by_id["rf-ces-sphincter-disturbance"].suppresses
    assert "test-startback-screening" not in dict(after)
    assert set(before) - set(dict(after)) == {"test-startback-screening"}


def test_a_tier_never_suppresses_the_suppressing_rule_itself(catalog: Path) -> None:
    edit(
        catalog / "precedence.yaml",
        "      - tier: reassurance\n",
        "      - tier: reassurance\n      - tier: emergency\n",
    )
    errors = _errors(catalog)  # the emergency rules now suppress each other: a cycle, but none itself
    assert any("cycle in 'suppresses'" in e for e in errors), errors
    assert not any("cannot suppress itself" in e for e in errors), errors


def test_a_tier_cannot_let_a_red_flag_give_way_to_a_less_urgent_card(catalog: Path) -> None:
    """The urgent tier suppresses reassurance from warning: a critical red flag put in that tier by
    mistake is refused at the precedence entry that would hide it."""
    edit(catalog / "rf-ces-sphincter-disturbance.yaml", "tier: emergency", "tier: reassurance")
    precedence = catalog / "precedence.yaml"
    errors = _errors(catalog)
    line = line_of(precedence, "{tier: reassurance, at: warning}")
    assert has_error(
        errors,
        f"precedence.yaml:{line}:",
        "(tier urgent) cannot suppress the critical red flag 'rf-ces-sphincter-disturbance'",
    ), errors


def test_overlapping_entries_apply_from_the_lowest_level(catalog: Path) -> None:
    rule = catalog / "rf-known-spinal-infection.yaml"
    edit(rule, "tier: urgent", "tier: urgent\nsuppresses:\n  - {rule: ref-physiotherapy, at: warning}")
    suppresses = dict(load_ruleset(catalog).by_id["rf-known-spinal-infection"].suppresses)
    assert suppresses["ref-physiotherapy"] == "warning"  # its tier says critical, the rule warning
    assert suppresses["test-startback-screening"] == "critical"


def test_a_tier_with_no_rules_is_a_warning(catalog: Path) -> None:
    _append(catalog / "precedence.yaml", "  spare:\n    description: a tier no rule belongs to\n")
    warnings = [d.render() for d in load_ruleset(catalog).warnings]
    assert any("precedence.yaml" in w and "tier 'spare' has no rules" in w for w in warnings), warnings
