"""What a clinician reads on every card of every demo patient (service/demo/patients), held in a golden
file: a change to a card's words, units, dates or evidence shows up here as a reviewed diff.

Refresh after a deliberate change: ``LUMBAR_UPDATE_GOLDEN=1 pytest tests/rules/test_demo_cards.py``.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cds_hooks.request import parse_hook_request
from rules.engine import RuleSet, evaluate
from service.demo_fhir import BUNDLED_DEMO, load_demo
from tests.support import builders

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "demo-cards.md"
TODAY = date(2026, 11, 21)
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _patients() -> dict[str, list[dict[str, Any]]]:
    """Each demo file's resources (dates shifted to TODAY, as the demo server does)."""
    store = load_demo(BUNDLED_DEMO, today=TODAY)
    out: dict[str, list[dict[str, Any]]] = {}
    for key, source in store.origin.items():
        rtype, rid = key.split("/", 1)
        out.setdefault(source, []).append(store.resources[rtype][rid])
    return dict(sorted(out.items()))


def render(ruleset: RuleSet) -> str:
    """Every card of every demo patient at patient-view, as markdown."""
    parts = ["# Cards of the demo patients (patient-view, 2026-11-21)\n"]
    for source, resources in _patients().items():
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        body = builders.hook_request(
            pid=patient["id"], prefetch=builders.prefetch_for(resources, list(builders.PATIENT_VIEW_KEYS))
        )
        evaluation = evaluate(ruleset, parse_hook_request(json.dumps(body).encode()), NOW)
        parts.append(f"## {source} (Patient/{patient['id']})\n")
        for card in evaluation.cards:
            parts.append(f"### [{card.indicator}] {card.summary}\n\n{card.detail}\n")
            for suggestion in card.suggestions:
                parts.append(f"- suggestion: {suggestion.label}")
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def differing(expected: str, actual: str) -> list[str]:
    """The patient sections whose text differs (the whole file when the sections do not line up)."""
    ours, theirs = expected.split("\n## "), actual.split("\n## ")
    if len(ours) != len(theirs):
        return ["(the list of patients)"]
    return [a.splitlines()[0] for a, b in zip(ours, theirs, strict=True) if a != b]


def test_every_card_of_every_demo_patient_reads_as_reviewed(ruleset: RuleSet) -> None:
    actual = render(ruleset)
    if os.environ.get("LUMBAR_UPDATE_GOLDEN"):
        GOLDEN.write_text(actual)
    assert differing(GOLDEN.read_text(), actual) == []


def test_a_changed_card_text_would_be_caught(ruleset: RuleSet) -> None:
    actual = render(ruleset)
    changed = actual.replace("°C", "Cel", 1)
    assert changed != actual  # the demo patients include a temperature
    assert len(differing(changed, actual)) == 1
    assert differing(actual, actual) == []


def test_card_evidence_reads_as_a_clinician_writes_it(ruleset: RuleSet) -> None:
    text = render(ruleset)
    assert "Cel" not in text and "10*9" not in text and "[Mass/volume]" not in text
    assert "°C" in text and "days ago (" in text


def test_the_orders_reasons_keep_the_body_site(ruleset: RuleSet) -> None:
    """Saddle numbness is numbness of the perineum: the site goes with the finding into the reasons."""
    resources = _patients()["02-cauda-equina.json"]
    body = builders.hook_request(
        pid="demo-cauda-equina",
        prefetch=builders.prefetch_for(resources, list(builders.PATIENT_VIEW_KEYS)),
    )
    evaluation = evaluate(ruleset, parse_hook_request(json.dumps(body).encode()), NOW)
    order = evaluation.cards[0].suggestions[0].actions[0].resource
    assert isinstance(order, dict)
    texts = [reason["text"] for reason in order["reasonCode"]]
    assert any(text.endswith("(Perineal structure)") for text in texts), texts
