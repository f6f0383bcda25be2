"""The evaluator: purity, fault isolation, precedence and consolidation on the bundled rule set."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cds_hooks.request import parse_hook_request
from rules.engine.compiler.ruleset import RuleSet
from rules.engine.evaluation.evaluate import evaluate
from tests.support import builders

NOW = datetime(2026, 11, 21, 10, tzinfo=UTC)


def _request(
    resources: list[dict[str, Any]], hook_instance: str = "0f0e0d0c-0b0a-4909-8807-060504030201"
) -> Any:
    body = builders.hook_request(prefetch={"all": builders.bundle(*resources)})
    body["hookInstance"] = hook_instance
    return parse_hook_request(json.dumps(body))


def test_evaluation_is_pure_and_deterministic(ruleset: RuleSet) -> None:
    request = _request(builders.lbp_patient_with_retention())
    first = evaluate(ruleset, request, NOW).response().to_wire()
    second = evaluate(ruleset, request, NOW).response().to_wire()
    assert first == second
    other = (
        evaluate(
            ruleset,
            _request(builders.lbp_patient_with_retention(), "1f0e0d0c-0b0a-4909-8807-060504030201"),
            NOW,
        )
        .response()
        .to_wire()
    )
    assert other["cards"][0]["uuid"] != first["cards"][0]["uuid"]


def test_the_issue_scenario(ruleset: RuleSet) -> None:
    evaluation = evaluate(ruleset, _request(builders.lbp_patient_with_retention()), NOW)
    assert [(c.indicator, c.source.topic.code if c.source.topic else None) for c in evaluation.cards] == [
        ("critical", "rf-ces-sphincter-disturbance")
    ]
    card = evaluation.cards[0]
    orders = {
        (a.resource or {})["code"]["coding"][0]["code"]: (a.resource or {})["priority"]
        for s in card.suggestions
        for a in s.actions
    }
    assert orders == {"306254002": "stat", "30679-5": "stat", "308482002": "stat", "308481009": "stat"}
    assert card.selection_behavior == "any"
    assert "Observation/ret-1" in (card.detail or "") and "2026-11-20" in (card.detail or "")
    assert "Condition/lbp-1" in (card.detail or "")  # the episode that gates it is cited too
    for suggestion in card.suggestions:
        resource = suggestion.actions[0].resource or {}
        assert resource["status"] == "draft" and resource["intent"] == "proposal"
        assert resource["subject"] == {"reference": "Patient/pat-45"}
        assert resource["reasonCode"][0]["coding"][0]["code"] == "192970008"
        assert {"reference": "Observation/ret-1"} in resource["reasonReference"]


def test_entered_in_error_and_old_retention_give_the_no_imaging_advice(ruleset: RuleSet) -> None:
    for resources in (
        builders.lbp_patient_with_retention(retention_status="entered-in-error"),
        builders.lbp_patient_with_retention(retention_when="2020-11-20"),
    ):
        evaluation = evaluate(ruleset, _request(resources), NOW)
        topics = [c.source.topic.code if c.source.topic else None for c in evaluation.cards]
        assert "rf-ces-sphincter-disturbance" not in topics
        assert "test-no-imaging-acute-uncomplicated" in topics


def _broken(ruleset: RuleSet, rule_id: str, error: Exception) -> RuleSet:
    """The rule set with one rule whose condition raises ``error``."""

    def boom(_: Any) -> None:
        raise error

    broken = replace(ruleset.by_id[rule_id], check=boom)
    rules = tuple(broken if r.id == rule_id else r for r in ruleset.rules)
    return replace(ruleset, rules=rules, by_id={r.id: r for r in rules})


def test_one_failing_rule_does_not_hide_another_rules_card(ruleset: RuleSet) -> None:
    # rf-young-onset needs nothing coded (age only), so it runs for this record; a rule whose value sets
    # the record does not touch is skipped and could not fail (tests/rules/test_needs.py).
    patched = _broken(ruleset, "rf-young-onset", RuntimeError("bug in a rule"))
    evaluation = evaluate(patched, _request(builders.lbp_patient_with_retention()), NOW)
    topics = [c.source.topic.code if c.source.topic else None for c in evaluation.cards]
    assert topics == ["engine-incomplete", "rf-ces-sphincter-disturbance"]
    assert evaluation.errors == {"rf-young-onset": "RuntimeError: bug in a rule"}
    assert evaluation.verdicts["rf-young-onset"].status == "error"


def test_a_failing_red_flag_still_suppresses_the_reassuring_advice(ruleset: RuleSet) -> None:
    patched = _broken(ruleset, "rf-age-over-50-not-improving", KeyError("x"))  # runs: needs nothing coded
    resources = [builders.patient(), builders.condition("lbp", "279039007", "2026-11-15")]
    evaluation = evaluate(patched, _request(resources), NOW)
    assert evaluation.verdicts["test-no-imaging-acute-uncomplicated"].status == "suppressed"
    assert evaluation.cards[0].indicator == "warning"
    assert "could not be evaluated" in evaluation.cards[0].summary


def test_no_low_back_pain_no_cards(ruleset: RuleSet) -> None:
    evaluation = evaluate(
        ruleset, _request([builders.patient(), builders.finding("r", "267064002", "2026-11-20")]), NOW
    )
    assert evaluation.cards == ()
    assert not evaluation.has_back_pain
    assert {v.status for v in evaluation.verdicts.values()} == {"no-context"}


def test_card_detail_escapes_markdown_from_the_record(ruleset: RuleSet) -> None:
    lbp = builders.condition("lbp", "279039007", "2026-11-15")
    obs = builders.finding("ret", "267064002", "2026-11-20")
    obs["code"]["text"] = "Retention [click](http://evil.example) *now*"
    evaluation = evaluate(ruleset, _request([builders.patient(), lbp, obs]), NOW)
    detail = evaluation.cards[0].detail or ""
    assert "[click](http" not in detail
    assert r"\[click\](http://evil.example) \*now\*" in detail


def test_a_suggestion_moved_to_another_card_stays_recommended(ruleset: RuleSet) -> None:
    """demo-myopathy: the myopathy card recommends a neurology referral, which the EMG card (a test card)
    also offers, optionally; it is suggested once, on the EMG card, and recommended there."""
    demo = Path(__file__).resolve().parents[2] / "service" / "demo" / "patients" / "18-myopathy.json"
    resources = [entry["resource"] for entry in json.loads(demo.read_text())["entry"]]
    body = builders.hook_request(prefetch={"all": builders.bundle(*resources)})
    body["context"]["patientId"] = "demo-myopathy"
    evaluation = evaluate(
        ruleset, parse_hook_request(json.dumps(body)), datetime(2026, 11, 21, 9, tzinfo=UTC)
    )
    offered = [
        (card.source.topic.code if card.source.topic else "", s)
        for card in evaluation.cards
        for s in card.suggestions
        if "neurology" in s.label.lower()
    ]
    assert [(owner, s.is_recommended) for owner, s in offered] == [("test-emg-ncs", True)]


def test_an_open_order_is_not_suggested_again_however_old_except_in_an_emergency() -> None:
    from rules.engine.evaluation.cards import OrderTemplate, PlannedOrder
    from rules.engine.evaluation.suggestions import existing_order
    from rules.engine.record.facts import OrderFact
    from rules.engine.record.patient import PatientRecord

    mri = ("http://loinc.org", "30679-5")
    planned = PlannedOrder(
        "MRI", True, OrderTemplate(mri, "MR Lumbar spine", "routine", {}), timedelta(weeks=6)
    )

    def order(status: str, days_ago: int) -> PatientRecord:
        when = NOW - timedelta(days=days_ago)
        fact = OrderFact(
            "ServiceRequest", "ServiceRequest/sr-1", (mri,), "MRI", status, when, when.isoformat()
        )
        return PatientRecord(now=NOW, patient_id="p", orders=[fact])

    assert existing_order(frozenset({mri}), planned, "warning", order("active", 60)) is not None
    assert existing_order(frozenset({mri}), planned, "warning", order("active", 10)) is not None
    assert existing_order(frozenset({mri}), planned, "critical", order("active", 10)) is not None
    assert existing_order(frozenset({mri}), planned, "critical", order("active", 60)) is None
    assert existing_order(frozenset({mri}), planned, "warning", order("completed", 10)) is not None
    assert existing_order(frozenset({mri}), planned, "warning", order("completed", 60)) is None
    assert existing_order(frozenset({mri}), planned, "critical", order("completed", 10)) is None
