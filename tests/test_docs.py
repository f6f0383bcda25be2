"""The documentation is checked against the code and the seeds, so it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rules import BUNDLED_CATALOG
from service.settings import Settings
from tests.support.catalogue import bundled_ruleset

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT.parent / "shared" / "seeds"
COVERAGE = (ROOT / "docs" / "clinical-coverage.md").read_text()
RULE_ID = re.compile(r"`((?:rf|dx|test|ref|adv)-[a-z0-9-]+)`")


def test_every_rule_named_in_the_coverage_exists_and_every_rule_is_named() -> None:
    named = set(RULE_ID.findall(COVERAGE))
    rules = set(bundled_ruleset().by_id)
    assert named - rules == set(), f"named but not in the catalogue: {sorted(named - rules)}"
    assert rules - named == set(), f"rules the coverage page never mentions: {sorted(rules - named)}"


def test_a_misspelt_rule_would_be_caught() -> None:
    named = set(RULE_ID.findall(COVERAGE + " `rf-cauda-equina-typo` "))
    assert "rf-cauda-equina-typo" in named - set(bundled_ruleset().by_id)


def _s0_items() -> list[str]:
    text = (SEEDS / "000_0089514d2e7101f4.txt").read_text()
    return sorted({line[2:].strip() for line in text.splitlines() if line.startswith("- ")})


def _s4_headings() -> list[str]:
    lines = (SEEDS / "004_54b9c50957179efe.txt").read_text().splitlines()
    return sorted(
        {
            line.strip()
            for line in lines
            if line.strip()
            and not line.strip().endswith((".", "?", "!", ":"))
            and len(line.split()) <= 8
            and not line.startswith(("Also Read", "Pain in the lower back:", "You May"))
        }
    )


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seed documents are outside this checkout")
def test_every_seed_item_is_mapped() -> None:
    lowered = COVERAGE.lower()
    missing = [item for item in _s0_items() + _s4_headings() if item.lower() not in lowered]
    assert missing == [], f"seed items the coverage page does not map: {missing}"
    assert len(_s0_items()) >= 40 and len(_s4_headings()) >= 30


DATA_CONTRACT = (ROOT / "docs" / "data-contract.md").read_text()
EXAMPLE = re.compile(r"<!-- example: (\S+) expect: (silent )?(\S+) -->\s*```json\n(.*?)```", re.S)
EXAMPLES = EXAMPLE.findall(DATA_CONTRACT)


def test_the_data_contract_has_examples() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize(("name", "silent", "rule_id", "resources"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_data_contract_example(name: str, silent: str, rule_id: str, resources: str) -> None:
    import json
    from datetime import UTC, datetime

    from cds_hooks.request import parse_hook_request
    from rules.engine.evaluation.evaluate import evaluate

    ruleset = bundled_ruleset()
    assert rule_id in ruleset.by_id
    listed = json.loads(resources)
    base = json.loads(EXAMPLES[0][3])  # the patient and the low back pain every example builds on
    if name != EXAMPLES[0][0]:
        listed = base + listed
    body = {
        "hook": "patient-view",
        "hookInstance": "0b8f5d1e-1c2a-4b3c-9d4e-5f6a7b8c9d0e",
        "context": {"patientId": "pat-1", "userId": "Practitioner/doc-1"},
        "prefetch": {"all": {"resourceType": "Bundle", "entry": [{"resource": r} for r in listed]}},
    }
    evaluation = evaluate(
        ruleset, parse_hook_request(json.dumps(body)), datetime(2026, 11, 21, 10, tzinfo=UTC)
    )
    assert (evaluation.verdicts[rule_id].status == "fired") is not bool(silent), evaluation.verdicts[rule_id]


GUIDE = (ROOT / "docs" / "rules-guide.md").read_text()
GUIDE_BLOCK = re.compile(r"<!-- guide: (valueset|rule) (\S+) -->\s*```yaml\n(.*?)```", re.S)
GUIDE_BROKEN = re.compile(
    r'<!-- guide: broken (\S+) replace="([^"]+)" with="([^"]+)" -->\s*```text\n(.*?)```', re.S
)


def _guide_catalogue(tmp_path: Path) -> Path:
    import shutil

    catalog = tmp_path / "catalog"
    shutil.copytree(BUNDLED_CATALOG, catalog)
    for kind, name, text in GUIDE_BLOCK.findall(GUIDE):
        target = catalog / "valuesets" / f"{name}.yaml" if kind == "valueset" else catalog / f"{name}.yaml"
        target.write_text(text)
    return catalog


def test_the_guide_examples_load_and_their_tests_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    assert len(GUIDE_BLOCK.findall(GUIDE)) == 3
    _guide_catalogue(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "catalog"]) == 0, capsys.readouterr().out
    for rule in ("ref-example-walking-limited", "dx-ng65-sketch"):
        capsys.readouterr()
        assert main(["test", "catalog", "-k", rule]) == 0, capsys.readouterr().out
        assert "2 passed, 0 failed" in capsys.readouterr().out


def test_the_guide_error_example_is_what_check_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    ((name, old, new, expected),) = GUIDE_BROKEN.findall(GUIDE)
    catalog = _guide_catalogue(tmp_path)
    path = catalog / f"{name}.yaml"
    path.write_text(path.read_text().replace(old, new, 1))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["check", "catalog"]) == 1
    out = capsys.readouterr().out
    assert expected.strip() in out, out


def _readme_settings(text: str) -> set[str]:
    return set(re.findall(r"^\| `(LUMBAR_[A-Z_]+)` \|", text, flags=re.MULTILINE))


def test_the_readme_lists_every_setting_and_only_real_ones() -> None:
    fields = {f"LUMBAR_{name.upper()}" for name in Settings.model_fields}
    assert _readme_settings((ROOT / "README.md").read_text()) == fields


def test_a_setting_missing_from_the_readme_would_be_caught() -> None:
    text = (ROOT / "README.md").read_text().replace("| `LUMBAR_BODY_TIMEOUT_S` |", "| BODY_TIMEOUT |")
    fields = {f"LUMBAR_{name.upper()}" for name in Settings.model_fields}
    assert fields - _readme_settings(text) == {"LUMBAR_BODY_TIMEOUT_S"}  # exactly the row taken out


def test_the_readme_sandbox_trust_matches_the_example_file() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("# docs/examples/sandbox-clients.yaml\n", 1)[1].split("```", 1)[0]
    example = (ROOT / "docs" / "examples" / "sandbox-clients.yaml").read_text()
    assert block.strip() in example
