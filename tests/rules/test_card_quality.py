"""Properties every card must have, checked over the evaluation of every case embedded in the catalogue."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from cds_hooks.request import parse_hook_request
from rules.engine.compiler.ruleset import RuleSet
from rules.engine.evaluation.evaluate import Evaluation, evaluate
from rules.engine.evaluation.pama import CONSULT_EXTENSION, RATING_EXTENSION
from rules.engine.selftest import run_case
from tests.support import builders
from tests.support.catalogue import bundled_ruleset

_CATALOG = bundled_ruleset()
NOW = datetime(2026, 11, 21, 10, tzinfo=UTC)


def _evaluations(ruleset: RuleSet) -> list[tuple[str, Evaluation]]:
    out = []
    for rule in ruleset.rules:
        for index, case in enumerate(rule.tests):
            result = run_case(ruleset, rule, index)
            assert result.evaluation is not None, result.report()
            out.append((f"{rule.id} :: {case.name}", result.evaluation))
    return out


EVALUATIONS = _evaluations(_CATALOG)


def test_the_catalogue_is_complete() -> None:
    assert len(_CATALOG.rules) == 40
    numbered = sorted(r.knowledge_base for r in _CATALOG.rules if len(r.knowledge_base) == 3)
    assert numbered == sorted(f"R{n:02d}" for n in range(1, 40))  # every knowledge base rule, once
    # and the rules derived from one of them (issue 15)
    assert [r.knowledge_base for r in _CATALOG.rules if len(r.knowledge_base) > 3] == ["R11b"]
    assert sum(len(r.tests) for r in _CATALOG.rules) >= 150


@pytest.mark.parametrize(("name", "evaluation"), EVALUATIONS, ids=[n for n, _ in EVALUATIONS])
def test_cards_are_well_formed(name: str, evaluation: Evaluation) -> None:
    orders: list[str] = []
    for card in evaluation.cards:
        assert len(card.summary) < 140
        assert card.override_reasons and all(r.display for r in card.override_reasons)
        assert card.source.topic is not None
        if card.source.topic.code == "engine-incomplete":
            continue
        assert card.source.url and card.source.url.startswith("http")
        assert card.links and card.links[0].url.startswith("http"), "every card links to its guideline"
        assert card.source.topic.code in _CATALOG.by_id
        assert card.source.topic.version == _CATALOG.version
        detail = card.detail or ""
        assert "**Evidence**" in detail
        evidence = detail.split("**Evidence**", 1)[1]
        assert (
            "(Observation/" in evidence
            or "(Condition/" in evidence
            or "(Procedure/" in evidence
            or (
                "(ServiceRequest/" in evidence
                or "(Patient/" in evidence
                or "(MedicationStatement/" in evidence
            )
        ), detail
        if card.suggestions:
            assert card.selection_behavior in ("any", "at-most-one")
        for suggestion in card.suggestions:
            for action in suggestion.actions:
                resource = action.resource or {}
                if action.type == "create":
                    assert resource["status"] == "draft" and resource["intent"] == "proposal"
                    assert resource["priority"] in ("stat", "asap", "urgent", "routine")
                    coding = resource["code"]["coding"][0]
                    assert (coding["system"], coding["code"]) in _CATALOG.terminology.displays
                    assert resource["subject"]["reference"].startswith("Patient/")
                    orders.append(f"{coding['system']}|{coding['code']}")
    assert len(orders) == len(set(orders)), f"an order is suggested twice: {sorted(orders)}"


def test_critical_cards_come_first_and_emergencies_are_stat() -> None:
    for name, evaluation in EVALUATIONS:
        ranks = [{"critical": 0, "warning": 1, "info": 2}[c.indicator] for c in evaluation.cards]
        assert ranks == sorted(ranks), name


def _order_request(draft: dict[str, Any], *resources: dict[str, Any]) -> Any:
    body = builders.hook_request(
        "order-select",
        prefetch={"all": builders.bundle(builders.patient(), *resources)},
        selections=[f"ServiceRequest/{draft['id']}"],
        draftOrders={"resourceType": "Bundle", "entry": [{"resource": draft}]},
    )
    return parse_hook_request(json.dumps(body))


DRAFT_XRAY = {
    "resourceType": "ServiceRequest",
    "id": "xr-9",
    "status": "draft",
    "intent": "plan",
    "code": {"coding": [{"system": "http://loinc.org", "code": "24970-6"}], "text": "XR lumbar spine"},
    "subject": {"reference": "Patient/pat-45"},
    "note": [{"text": "kept exactly as sent"}],
    "extension": [{"url": "http://example.org/other", "valueString": "kept"}],
}


def test_pama_rating_returns_the_draft_whole_with_the_rating_added(ruleset: RuleSet) -> None:
    lbp = builders.condition("lbp", "279039007", "2026-11-10")
    wire = evaluate(ruleset, _order_request(DRAFT_XRAY, lbp), NOW).response().to_wire()
    assert wire["extension"]["systemActions"] == wire["systemActions"]
    (action,) = wire["systemActions"]
    assert action["type"] == "update"
    resource = action["resource"]
    assert resource["note"] == [{"text": "kept exactly as sent"}]
    urls = [e["url"] for e in resource["extension"]]
    assert urls == ["http://example.org/other", RATING_EXTENSION, CONSULT_EXTENSION]
    rating = resource["extension"][1]["valueCodeableConcept"]["coding"][0]
    assert rating == {"system": "http://fhir.org/argonaut/CodeSystem/pama-rating", "code": "not-appropriate"}
    warning = next(
        c for c in wire["cards"] if c["source"]["topic"]["code"] == "test-imaging-order-not-indicated"
    )
    removal = next(s for s in warning["suggestions"] if s["actions"][0]["type"] == "delete")
    assert removal["actions"][0]["resourceId"] == "ServiceRequest/xr-9"


def test_a_red_flag_rates_the_order_appropriate_and_keeps_its_card(ruleset: RuleSet) -> None:
    lbp = builders.condition("lbp", "279039007", "2026-11-10")
    retention = builders.finding("ret", "267064002", "2026-11-20")
    wire = evaluate(ruleset, _order_request(DRAFT_XRAY, lbp, retention), NOW).response().to_wire()
    topics = [c["source"]["topic"]["code"] for c in wire["cards"]]
    assert topics[0] == "rf-ces-sphincter-disturbance"
    assert "test-imaging-order-not-indicated" not in topics
    codes = [
        e["valueCodeableConcept"]["coding"][0]["code"]
        for e in wire["systemActions"][0]["resource"]["extension"]
        if e["url"] == RATING_EXTENSION
    ]
    assert codes == ["appropriate"]


def test_the_sandbox_pama_shape_is_accepted(ruleset: RuleSet) -> None:
    from pathlib import Path

    body = (
        Path(__file__).resolve().parent.parent / "fixtures" / "sandbox-pama-order-select.json"
    ).read_bytes()
    evaluation = evaluate(ruleset, parse_hook_request(body), NOW)
    assert evaluation.has_back_pain  # the draft order's reason, low back pain, is the context
    assert evaluation.errors == {}


def test_card_ids_are_the_standard_version_5_uuids() -> None:
    """The fast ``uuid5_text`` gives exactly ``uuid.uuid5`` (ids stay stable across versions)."""
    import uuid

    from rules.engine.evaluation.cards import UUID_NAMESPACE, uuid5_text

    for name in ("", "a", "0f0e0d0c-0b0a-4909-8807-060504030201|rf-ces-sphincter-disturbance", "ü" * 300):
        assert uuid5_text(UUID_NAMESPACE, name) == str(uuid.uuid5(UUID_NAMESPACE, name))
