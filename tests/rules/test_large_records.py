"""A record with thousands of matching Observations: every kind of evidence is cited, the card stays within
CDS Hooks' limits, and evaluation grows linearly (a quadratic scan once took 4 s for 10,000)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from cds_hooks.request import HookRequest, parse_hook_request
from rules.engine import RuleSet, evaluate
from rules.engine.evaluation.cards import EVIDENCE_LINES
from tests.support import builders

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _request(retentions: int) -> HookRequest:
    resources = [builders.patient(), builders.condition("lbp-1", "279039007", "2026-11-15")]
    resources += [
        builders.finding(
            f"ret-{i}", "267064002", f"2026-11-{20 - i % 5:02d}T08:30:00Z", display="Retention of urine"
        )
        for i in range(retentions)
    ]
    body = builders.hook_request(prefetch=builders.prefetch_for(resources, list(builders.PATIENT_VIEW_KEYS)))
    return parse_hook_request(json.dumps(body).encode())


def test_two_thousand_matching_observations_give_one_card_within_its_limits(ruleset: RuleSet) -> None:
    evaluation = evaluate(ruleset, _request(2000), NOW)
    (card,) = evaluation.cards
    assert card.indicator == "critical"
    assert len(card.detail) < 20_000
    lines = [line for line in card.detail.splitlines() if line.startswith("- ")]
    assert len(lines) <= EVIDENCE_LINES
    assert sum("Retention of urine: present" in line for line in lines) == 3  # the latest three
    assert "- and 1,997 more Retention of urine records, the earliest 5 days ago (2026-11-16)" in lines
    assert any("Low back pain episode" in line for line in lines)  # the other kinds are all there


def test_evaluation_grows_linearly_with_the_record(ruleset: RuleSet) -> None:
    small, large = _request(1000), _request(10_000)

    def took(request: HookRequest) -> float:
        started = time.perf_counter()
        evaluate(ruleset, request, NOW)
        return time.perf_counter() - started

    took(small)  # warm
    ratio = min(took(large) for _ in range(2)) / min(took(small) for _ in range(3))
    assert ratio < 25, f"10x the records took {ratio:.1f}x the time (quadratic would be ~100x)"
