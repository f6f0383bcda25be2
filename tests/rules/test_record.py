"""PatientRecord normalisation (knowledge base Part B), tested on real FHIR JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cds_hooks.request import parse_hook_request
from rules.engine.compiler.ruleset import RuleSet
from rules.engine.record.normalise import RecordBuilder
from rules.engine.record.patient import PatientRecord
from tests.support import builders

NOW = datetime(2026, 11, 21, 10, tzinfo=UTC)


def _record(ruleset: RuleSet, resources: list[dict[str, Any]], **context: Any) -> PatientRecord:
    body = builders.hook_request(prefetch={"all": builders.bundle(*resources)}, **context)
    return PatientRecord.from_request(parse_hook_request(json.dumps(body)), ruleset.builder, NOW)


def test_irrelevant_resources_are_not_normalised(ruleset: RuleSet) -> None:
    record = _record(
        ruleset,
        [
            builders.finding("bp", "75367002", "2026-11-20"),  # blood pressure: no rule reads it
            builders.finding("ret", "267064002", "2026-11-20"),
        ],
    )
    assert [f.reference for f in record.facts] == ["Observation/ret"]


def test_laterality_from_component_and_from_body_site(ruleset: RuleSet) -> None:
    obs = builders.finding("o1", "309537005", "2026-11-20")
    obs["component"] = [
        {
            "code": {"coding": [{"system": builders.SNOMED, "code": "272741003"}]},
            "valueCodeableConcept": {"coding": [{"system": builders.SNOMED, "code": "51440002"}]},
        }
    ]
    cond = builders.condition("c1", "23056005", "2026-11-18")
    cond["bodySite"] = [
        {
            "coding": [
                {"system": builders.SNOMED, "code": "61685007"},
                {"system": builders.SNOMED, "code": "7771000"},
            ]
        }
    ]
    record = _record(ruleset, [obs, cond])
    sides = {f.reference: f.laterality for f in record.facts}
    assert sides == {"Observation/o1": {"left", "right"}, "Condition/c1": {"left"}}


def test_age_in_completed_years_and_missing_birth_date(ruleset: RuleSet) -> None:
    assert _record(ruleset, [builders.patient(birth_date="1976-11-21")]).age() == 50
    assert _record(ruleset, [builders.patient(birth_date="1976-11-22")]).age() == 49
    # A partial birth date counts from its earliest day: the oldest the patient can be.
    assert _record(ruleset, [builders.patient(birth_date="1976")]).age() == 50
    assert _record(ruleset, [builders.patient(birth_date="1976-12")]).age() == 49
    no_birth = builders.patient()
    del no_birth["birthDate"]
    assert _record(ruleset, [no_birth]).age() is None


def test_only_this_patients_resources_count(ruleset: RuleSet) -> None:
    other = builders.finding("ret", "267064002", "2026-11-20", pid="someone-else")
    record = _record(ruleset, [other])
    assert record.facts == []
    assert record.notes == ["Observation/ret: about another patient; ignored"]


def test_episode_merges_records_less_than_90_days_apart(ruleset: RuleSet) -> None:
    records = [
        builders.finding("a", "279039007", "2026-03-01"),  # an old episode, more than 90 days before the next
        builders.finding("b", "279039007", "2026-09-01"),
        builders.finding("c", "279039007", "2026-11-01"),
    ]
    record = _record(ruleset, records)
    episode = record.episode(ruleset.back_pain)
    assert episode is not None
    assert episode.first.reference == "Observation/b"
    assert episode.length.days == 81


def test_an_active_condition_spans_until_now(ruleset: RuleSet) -> None:
    record = _record(ruleset, [builders.condition("c", "278860009", "2025-05-01")])
    episode = record.episode(ruleset.back_pain)
    assert episode is not None and episode.length.days > 500


def test_no_episode_without_dates_and_no_context_without_pain(ruleset: RuleSet) -> None:
    undated = builders.condition("c", "279039007", "2026-11-01")
    del undated["onsetDateTime"], undated["recordedDate"]
    record = _record(ruleset, [undated])
    assert record.has_back_pain(ruleset.back_pain)
    assert record.episode(ruleset.back_pain) is None
    assert not _record(ruleset, [builders.finding("ret", "267064002", "2026-11-20")]).has_back_pain(
        ruleset.back_pain
    )


def test_draft_order_reason_asserts_the_context(ruleset: RuleSet) -> None:
    draft = {
        "resourceType": "ServiceRequest",
        "id": "d1",
        "status": "draft",
        "intent": "plan",
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72133"}]},
        "subject": {"reference": "Patient/pat-45"},
        "reasonCode": [{"coding": [{"system": builders.SNOMED, "code": "279039007"}]}],
    }
    body = builders.hook_request(
        "order-select",
        prefetch={},
        selections=["ServiceRequest/d1"],
        draftOrders={"resourceType": "Bundle", "entry": [{"resource": draft}]},
    )
    record = PatientRecord.from_request(parse_hook_request(json.dumps(body)), ruleset.builder, NOW)
    assert record.has_back_pain(ruleset.back_pain)


def test_builder_indexes_only_relevant_codes() -> None:
    builder = RecordBuilder(frozenset({("http://snomed.info/sct", "1")}))
    body = builders.hook_request(prefetch={"x": builders.bundle(builders.finding("a", "2", "2026-11-20"))})
    record = PatientRecord.from_request(parse_hook_request(json.dumps(body)), builder, NOW)
    assert record.facts == []
