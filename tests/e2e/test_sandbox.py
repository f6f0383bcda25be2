"""The CDS Hooks sandbox against the real service and the real demo FHIR server, without a browser.

``tests/support/sandbox.py`` replays the sandbox's exact requests (taken from its source). For every demo
patient the cards, the PAMA rating and the cards of the PAMA screen must be those ``docs/sandbox.md``
documents, so the guide a new user follows is checked on every run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from service.demo_fhir import BUNDLED_DEMO
from tests.support.jwt_tools import ec_key, public_set
from tests.support.live import live_demo_fhir, live_service
from tests.support.sandbox import ISSUER, LOW_BACK_PAIN, MRI_LUMBAR, Sandbox, pama_context, pama_rating

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "sandbox.md"
ADMIN = "a-long-admin-token-for-the-sandbox-test"
_ROW = re.compile(r"^\| `(demo-[a-z0-9-]+)` \|([^|]*)\|[^|]*\|([^|]*)\|([^|]*)\|\s*$")
_CARD = re.compile(r"\b(critical|warning|info) `([a-z0-9-]+)`")
_RATING = re.compile(r"`(appropriate|not-appropriate|no-criteria-apply)`")

Cards = list[tuple[str, str]]


def documented() -> dict[str, tuple[Cards, str | None, Cards]]:
    """docs/sandbox.md's patient table: patient id -> (patient-view cards, PAMA rating, PAMA cards)."""
    rows: dict[str, tuple[Cards, str | None, Cards]] = {}
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        found = _ROW.match(line)
        if found is None:
            continue
        patient, _, view, pama = found.groups()
        rating = _RATING.search(pama)
        rows[patient] = (_CARD.findall(view), rating.group(1) if rating else None, _CARD.findall(pama))
    return rows


def documented_names() -> dict[str, str]:
    """docs/sandbox.md's patient table: patient id -> the name the patient picker shows."""
    found = (_ROW.match(line) for line in GUIDE.read_text(encoding="utf-8").splitlines())
    return {row.group(1): row.group(2).strip() for row in found if row}


def compare(what: str, expected: Cards, response: dict[str, Any]) -> list[str]:
    """Differences between the documented cards (indicator, rule id, in order) and a response's."""
    seen = [(card["indicator"], card["source"]["topic"]["code"]) for card in response["cards"]]
    return [] if seen == expected else [f"{what}: documented {expected}, answered {seen}"]


EXPECTED = documented()


def test_the_guide_documents_every_demo_patient() -> None:
    ids = set()
    for path in BUNDLED_DEMO.glob("*.json"):
        bundle = orjson.loads(path.read_bytes())
        ids |= {e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"}
    assert len(ids) >= 12
    assert set(EXPECTED) == ids
    assert all(view for view, _, _ in EXPECTED.values())


def test_each_demo_patient_is_named_for_what_it_shows() -> None:
    names = {}
    for path in BUNDLED_DEMO.glob("*.json"):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            if entry["resource"]["resourceType"] == "Patient":
                name = entry["resource"]["name"][0]
                names[entry["resource"]["id"]] = f"{name['given'][0]} {name['family']}"
    assert documented_names() == names
    assert names["demo-cauda-equina"] == "Demo Cauda Equina"
    assert all(name.startswith("Demo ") for name in names.values())


def test_a_wrong_expectation_in_the_guide_fails() -> None:
    response = {"cards": [{"indicator": "critical", "source": {"topic": {"code": "rf-suspected-mscc"}}}]}
    assert compare("view", [("critical", "rf-suspected-mscc")], response) == []
    assert compare("view", [("warning", "rf-suspected-mscc")], response)
    assert compare("view", [("critical", "rf-suspected-mscc"), ("info", "ref-physiotherapy")], response)
    assert compare("view", [], response)


@pytest.fixture(scope="module")
def demo_fhir() -> Iterator[str]:
    with live_demo_fhir() as base:
        yield base


@pytest.fixture(scope="module")
def sandbox_key() -> Any:
    return ec_key("sandbox-test-key")


@pytest.fixture(scope="module")
def service(demo_fhir: str, sandbox_key: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service as docs/sandbox.md runs it: JWT required, the sandbox trusted through its inline public
    key (here a test key in its place, since the sandbox's own tokens cannot be minted), the demo server
    allowed for the service's own fetches."""
    work = tmp_path_factory.mktemp("sandbox")
    clients = work / "clients.yaml"
    # as docs/examples/sandbox-clients-offline.yaml, in JSON (which is YAML)
    clients.write_bytes(orjson.dumps({"clients": [{"issuer": ISSUER, "jwks": public_set(sandbox_key)}]}))
    env = {
        "LUMBAR_AUTH": "jwt",
        "LUMBAR_CLIENTS_FILE": str(clients),
        "LUMBAR_FHIR_ALLOWLIST": demo_fhir,
        "LUMBAR_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'lumbar.db'}",
        "LUMBAR_ADMIN_TOKEN": ADMIN,
    }
    with live_service(env, log=work / "service.log") as base:
        yield base


@pytest.fixture
def browser(demo_fhir: str, sandbox_key: Any) -> Iterator[Any]:
    with httpx.Client(timeout=30) as http:
        yield lambda patient: Sandbox(http, demo_fhir, patient, sandbox_key)


def _open(browser: Any, patient: str, base: str, hook: str) -> tuple[Sandbox, dict[str, Any], str]:
    """The sandbox opened on ``patient``: its start-up calls, discovery, and the service of ``hook``."""
    sandbox = browser(patient)
    sandbox.start()
    found = next(s for s in sandbox.discover(f"{base}/cds-services") if s["hook"] == hook)
    return sandbox, found, f"{base}/cds-services/{found['id']}"


@pytest.mark.parametrize("patient", sorted(EXPECTED))
def test_patient_view_as_the_sandbox_calls_it(patient: str, service: str, browser: Any) -> None:
    sandbox, pv, url = _open(browser, patient, service, "patient-view")
    prefetch = sandbox.prefetch(pv["prefetch"], {})
    assert set(prefetch) == set(pv["prefetch"])  # the demo server answers every template's POST _search
    answer = sandbox.call(url, "patient-view", {}, prefetch)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == "*"
    body = answer.json()
    assert compare("patient-view", EXPECTED[patient][0], body) == []
    for card in body["cards"]:  # what the sandbox needs to render the card and send feedback
        assert card["uuid"] and card["summary"] and card["source"]["label"]
        assert all(reason["display"] for reason in card["overrideReasons"])
        assert all(s["uuid"] and s["label"] for s in card.get("suggestions", []))

    # Without any prefetch (every sandbox fetch failed), the service fetches from the demo server itself.
    fetched = sandbox.call(url, "patient-view", {}, {})
    assert fetched.status_code == 200, fetched.text
    assert compare("patient-view without prefetch", EXPECTED[patient][0], fetched.json()) == []


@pytest.mark.parametrize("patient", sorted(EXPECTED))
def test_pama_screen_as_the_sandbox_calls_it(patient: str, service: str, browser: Any) -> None:
    sandbox, order_select, url = _open(browser, patient, service, "order-select")
    context = pama_context(patient, None, [])  # on entering the screen: no study chosen yet
    first = sandbox.call(url, "order-select", context, sandbox.prefetch(order_select["prefetch"], context))
    assert first.status_code == 200, first.text
    assert pama_rating(first.json()) is None

    context = pama_context(patient, MRI_LUMBAR, [LOW_BACK_PAIN])
    answer = sandbox.call(url, "order-select", context, sandbox.prefetch(order_select["prefetch"], context))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    _, rating, cards = EXPECTED[patient]
    assert pama_rating(body) == rating
    assert body["systemActions"] == body["extension"]["systemActions"]
    assert compare("PAMA order-select", cards, body) == []


def test_feedback_from_the_sandbox_is_stored(service: str, browser: Any) -> None:
    """A red-flag patient: accept a suggestion, override another card with the sandbox's bare reason, and
    find both in the report."""
    sandbox, pv, url = _open(browser, "demo-cauda-equina", service, "patient-view")
    body = sandbox.call(url, "patient-view", {}, sandbox.prefetch(pv["prefetch"], {})).json()
    critical = body["cards"][0]
    assert critical["indicator"] == "critical" and critical["suggestions"]
    accepted = sandbox.feedback(
        url,
        {
            "card": critical["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": critical["suggestions"][0]["uuid"]}],
        },
    )
    assert accepted.status_code == 200, accepted.text
    reason = critical["overrideReasons"][0]
    overridden = sandbox.feedback(
        url,
        {
            "card": critical["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": {"code": reason["code"], "system": reason["system"]}},
        },
    )
    assert overridden.status_code == 200, overridden.text

    rule = critical["source"]["topic"]["code"]
    deadline = time.monotonic() + 10
    while True:
        report = httpx.get(f"{service}/admin/report", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        row = next((r for r in report["rules"] if r["rule_id"] == rule), None)
        if row is not None and (row["accepted"], row["overridden"]) == (1, 1):
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
