"""Loading the catalogue: every error at once, each at file:line:col, and an invalid catalogue refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rules import BUNDLED_CATALOG
from rules.engine.compiler.ruleset import load_ruleset
from rules.engine.model.diagnostics import RuleSetError
from tests.support.files import edit, has_error, line_of


def _errors(folder: Path) -> list[str]:
    with pytest.raises(RuleSetError) as caught:
        load_ruleset(folder)
    return [d.render() for d in caught.value.diagnostics]


def test_bundled_catalogue_loads(catalog: Path) -> None:
    ruleset = load_ruleset(catalog)
    assert "rf-ces-sphincter-disturbance" in ruleset.by_id
    assert len(ruleset.version) == 16


@pytest.mark.parametrize(
    ("file", "old", "new", "message", "hint"),
    [
        (
            "rf-ces-saddle-sensory-loss.yaml",
            "valueset: saddle-sensory-loss",
            "valueset: saddle-sensory-los",
            "unknown value set 'saddle-sensory-los'",
            "did you mean 'saddle-sensory-loss'?",
        ),
        (
            "rf-young-onset.yaml",
            "is: acute-episode",
            "is: acute-episod",
            "unknown definition 'acute-episod'",
            "did you mean 'acute-episode'?",
        ),
        ("rf-ivdu.yaml", "tier: urgent", "tier: urgnet", "unknown tier 'urgnet'", "did you mean 'urgent'?"),
        (
            "precedence.yaml",
            "{tier: reassurance, at: warning}",
            "{tier: reasurance, at: warning}",
            "unknown tier 'reasurance'",
            "did you mean 'reassurance'?",
        ),
    ],
)
def test_an_unknown_name_is_located_with_a_hint(
    catalog: Path, file: str, old: str, new: str, message: str, hint: str
) -> None:
    path = catalog / file
    edit(path, old, new)
    line = line_of(path, new)
    errors = _errors(catalog)
    assert has_error(errors, f"{file}:{line}:", message, hint), errors


def test_all_errors_of_all_files_are_reported_together(catalog: Path) -> None:
    edit(catalog / "rf-acute-motor-deficit.yaml", "indicator: critical", "indicator: urgent")
    edit(catalog / "adv-self-management-nonspecific.yaml", "category: advice", "category: advice\nsumary: x")
    edit(catalog / "valuesets" / "leg-weakness.yaml", "snomed:6077001", "snomed:6077002")
    errors = _errors(catalog)
    joined = "\n".join(errors)
    assert (
        "rf-acute-motor-deficit.yaml:5:12: error: "
        "indicator: 'urgent' is not one of info, warning, critical" in joined
    )
    assert "adv-self-management-nonspecific.yaml:5:1: error: unknown key 'sumary'" in joined
    assert "help: did you mean 'summary'?" in joined
    assert "leg-weakness.yaml" in joined and "snomed:6077002" in joined and "terminology list" in joined


def test_codes_outside_the_terminology_list_are_refused(catalog: Path) -> None:
    # Part E: 24531-6 is US Retroperitoneum, wrongly used as MRI lumbar in a public repository.
    edit(catalog / "rf-ces-sphincter-disturbance.yaml", "order: loinc:30679-5", "order: loinc:30679-6")
    errors = _errors(catalog)
    assert any("code 'loinc:30679-6' is not in the project's terminology list" in e for e in errors), errors


def test_duplicate_keys_and_yaml_syntax(catalog: Path) -> None:
    edit(
        catalog / "rf-ces-bilateral-radicular.yaml",
        "category: red-flag",
        "category: red-flag\ncategory: test",
    )
    edit(catalog / "test-no-imaging-acute-uncomplicated.yaml", "title:", "title: [unclosed\nx:")
    errors = "\n".join(_errors(catalog))
    assert "rf-ces-bilateral-radicular.yaml:5:1: error: invalid YAML:" in errors and "duplicate key" in errors
    assert "test-no-imaging-acute-uncomplicated.yaml" in errors


def test_rule_id_must_match_file_name(catalog: Path) -> None:
    (catalog / "rf-acute-motor-deficit.yaml").rename(catalog / "rf-motor.yaml")
    errors = _errors(catalog)
    assert any(
        "rf-motor.yaml:2:1: error: rule id 'rf-acute-motor-deficit' differs from the file name 'rf-motor'"
        in e
        for e in errors
    ), errors


def test_a_rule_needs_both_test_directions(catalog: Path) -> None:
    path = catalog / "rf-ces-bilateral-radicular.yaml"
    text = path.read_text().replace("expect: {fired: false}", "expect: {fired: true}")
    path.write_text(text)
    assert any("one test that fires and one that stays silent" in e for e in _errors(catalog))


def test_references_between_rules_are_checked(catalog: Path) -> None:
    edit(
        catalog / "rf-ces-saddle-sensory-loss.yaml",
        "consolidate_into: rf-ces-sphincter-disturbance",
        "consolidate_into: rf-ces-sphincter",
    )
    edit(catalog / "rf-suspected-mscc.yaml", "  - rf-cancer-history", "  - rf-cancer-hist")
    errors = "\n".join(_errors(catalog))
    assert (
        "unknown rule 'rf-ces-sphincter'" in errors
        and "did you mean 'rf-ces-sphincter-disturbance'?" in errors
    )
    assert "unknown rule 'rf-cancer-hist'" in errors and "did you mean 'rf-cancer-history'?" in errors


def test_advice_cannot_suppress_a_red_flag(catalog: Path) -> None:
    edit(
        catalog / "adv-self-management-nonspecific.yaml",
        "hooks: [patient-view, encounter-start]",
        "hooks: [patient-view, encounter-start]\nsuppresses: [rf-ces-sphincter-disturbance]",
    )
    errors = "\n".join(_errors(catalog))
    assert "info rule cannot suppress the critical red flag 'rf-ces-sphincter-disturbance'" in errors


def test_suppression_cycles_are_errors(catalog: Path) -> None:
    edit(
        catalog / "adv-self-management-nonspecific.yaml",
        "hooks: [patient-view, encounter-start]",
        "hooks: [patient-view, encounter-start]\nsuppresses: [test-no-imaging-acute-uncomplicated]",
    )
    edit(
        catalog / "test-no-imaging-acute-uncomplicated.yaml",
        "hooks: [patient-view, encounter-start]",
        "hooks: [patient-view, encounter-start]\nsuppresses: [adv-self-management-nonspecific]",
    )
    assert any("cycle in 'suppresses'" in e for e in _errors(catalog))


def test_summary_over_139_characters_is_refused(catalog: Path) -> None:
    path = catalog / "adv-self-management-nonspecific.yaml"
    edit(path, 'summary: "Self-management:', 'summary: "' + "x" * 140 + " Self-management:")
    assert any(
        "adv-self-management-nonspecific.yaml" in e and "CDS Hooks 2.0 wants fewer than 140" in e
        for e in _errors(catalog)
    )


def test_condition_needs_exactly_one_key(catalog: Path) -> None:
    edit(
        catalog / "rf-ces-saddle-sensory-loss.yaml", "when:\n  finding:", "when:\n  age: {gt: 3}\n  finding:"
    )
    assert any("a condition has 2 keys (finding, age)" in e for e in _errors(catalog))


def test_missing_context_value_set_is_an_error(catalog: Path) -> None:
    (catalog / "valuesets" / "low-back-pain.yaml").unlink()
    assert any("missing value set 'low-back-pain'" in e for e in _errors(catalog))


def test_missing_directory() -> None:
    with pytest.raises(RuleSetError, match="does not exist"):
        load_ruleset(Path("/nonexistent/rules"))


def test_the_version_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas started from different folders must report the same rule-set version for the same rules."""

    here = load_ruleset(BUNDLED_CATALOG).version
    monkeypatch.chdir(tmp_path)
    assert load_ruleset(BUNDLED_CATALOG).version == here
    copy = tmp_path / "copy"
    shutil.copytree(BUNDLED_CATALOG, copy)
    assert load_ruleset(copy).version == here
    (copy / "valuesets" / "lumbar-imaging.yaml").write_text(
        (copy / "valuesets" / "lumbar-imaging.yaml").read_text() + "\n"
    )
    assert load_ruleset(copy).version != here


def test_an_order_less_urgent_than_its_summary_is_an_error(catalog: Path) -> None:
    """The summary-urgency lint (issue 15): a same-day card whose MRI is only urgent, or an "emergency
    department now" card whose emergency referral is only asap, is refused with the suggestion's line."""
    fever = catalog / "rf-fever-spinal-infection.yaml"
    edit(
        fever,
        'order: "loinc:24967-2", priority: urgent, priority_at: {critical: asap}}',
        'order: "loinc:24967-2", priority: urgent}',
    )
    trauma = catalog / "rf-recent-trauma.yaml"
    edit(trauma, 'order: "snomed:306254002", priority: stat', 'order: "snomed:306254002", priority: asap')
    errors = _errors(catalog)
    mri = line_of(fever, 'order: "loinc:24967-2"')
    referral = line_of(trauma, 'order: "snomed:306254002"')
    assert has_error(
        errors, f"rf-fever-spinal-infection.yaml:{mri}:", "says 'same day'", "is urgent at critical"
    ), errors
    assert any(
        f"rf-recent-trauma.yaml:{referral}:" in e and "says 'now'" in e and "use stat" in e for e in errors
    ), errors
    assert len([e for e in errors if ": error:" in e]) == 2, (
        errors
    )  # nothing else in the catalogue is flagged


def test_priority_at_raises_an_order_only_at_its_level(catalog: Path) -> None:
    ruleset = load_ruleset(catalog)
    mri = next(
        s
        for s in ruleset.by_id["rf-fever-spinal-infection"].card.suggestions  # type: ignore[union-attr]
        if s.order is not None and s.order.code[1] == "24967-2"
    )
    assert [mri.order_for(level).priority for level in ("info", "warning", "critical")] == [  # type: ignore[union-attr]
        "urgent",
        "urgent",
        "asap",
    ]


def test_a_test_case_needs_a_now_of_its_own_or_from_the_file(catalog: Path) -> None:
    path = catalog / "rf-ces-sphincter-disturbance.yaml"
    edit(path, "test_defaults:\n  now: 2026-11-21T10:00:00Z", "test_defaults:\n  # now: 2026-11-21T10:00:00Z")
    errors = _errors(catalog)
    line = line_of(path, "- name: a cauda equina syndrome diagnosed three weeks ago")
    wanted = f"rf-ces-sphincter-disturbance.yaml:{line}:5: error: a test case needs 'now' (or the file's"
    assert any(wanted in e for e in errors), errors


def test_test_defaults_give_now_patient_and_a_background_record(catalog: Path) -> None:
    """The file's defaults: the case's own now and patient win; its records follow the shared ones, unless
    it says ``background: false``."""
    path = catalog / "rf-ces-sphincter-disturbance.yaml"
    edit(path, "test_defaults:\n", "test_defaults:\n  patient: {age: 70}\n")
    edit(
        path,
        "    expect: {fired: true, indicator: critical}",
        "    now: 2026-12-01T10:00:00Z\n    expect: {fired: true}",
    )
    rule = load_ruleset(catalog).by_id["rf-ces-sphincter-disturbance"]
    first, second = rule.tests[0], rule.tests[1]
    assert first.now == "2026-12-01T10:00:00Z" and second.now == "2026-11-21T10:00:00Z"
    assert first.patient is not None and first.patient.age == 70
    # background: false: only the case's own back pain (5 weeks) and diagnosis
    assert [(r.kind(), r.date) for r in first.records] == [
        (("Condition", "snomed:279039007"), "-5w"),
        (("Condition", "snomed:192970008"), "-3w"),
    ]
    retention = next(case for case in rule.tests if case.name.startswith("new urinary retention"))
    assert retention.patient is not None and retention.patient.age == 45
    assert [(r.kind(), r.date) for r in retention.records] == [
        (("Condition", "snomed:279039007"), "-6d"),  # the file's background comes first
        (("Observation", "snomed:267064002"), "-1d"),
    ]


def test_a_bad_code_system_in_test_defaults_is_located(catalog: Path) -> None:
    path = catalog / "rf-ces-sphincter-disturbance.yaml"
    edit(
        path,
        "    - {Condition: snomed:279039007, date: -6d}",
        "    - {Condition: snowmed:279039007, date: -6d}",
    )
    line = line_of(path, "snowmed:279039007")
    errors = _errors(catalog)
    assert any(f"rf-ces-sphincter-disturbance.yaml:{line}:7: error: unknown code system" in e for e in errors)
