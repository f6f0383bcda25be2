"""``lumbar demo-fhir``: loading and date-shifting the demo patients, and the FHIR R4 search it serves."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rules.engine.compiler.ruleset import RuleSet
from service.demo_fhir import BUNDLED_DEMO, DemoDataError, load_demo, shift_dates
from tests.support import builders
from tests.support.live import live_demo_fhir

ANCHOR = date(2026, 11, 21)
LOINC, SNOMED = builders.LOINC, builders.SNOMED


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """The real command (``python -m service demo-fhir``) over HTTP."""
    with live_demo_fhir() as base, httpx.Client(base_url=base.removesuffix("/fhir"), timeout=10) as http:
        yield http


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


def test_the_bundled_patients_load_and_are_valid_fhir() -> None:
    store = load_demo(BUNDLED_DEMO, today=ANCHOR)
    assert len(store.resources["Patient"]) >= 12
    for rtype in ("Observation", "Condition", "MedicationStatement", "Procedure"):
        assert store.resources.get(rtype), rtype


def test_dates_move_with_today_and_ages_stay() -> None:
    then = load_demo(BUNDLED_DEMO, today=ANCHOR)
    later = load_demo(BUNDLED_DEMO, today=ANCHOR + timedelta(days=40))
    for rid, patient in then.resources["Patient"].items():
        born = date.fromisoformat(patient["birthDate"])
        assert date.fromisoformat(later.resources["Patient"][rid]["birthDate"]) - born == timedelta(days=40)
    condition = next(iter(then.resources["Condition"].values()))
    moved = later.resources["Condition"][condition["id"]]
    assert moved["recordedDate"] != condition["recordedDate"]
    assert shift_dates(
        {"a": "2026-11-20T10:00:00Z", "b": "2026-11", "identifier": [{"value": "2026-11-20"}]}, 1
    ) == {
        "a": "2026-11-21T10:00:00Z",
        "b": "2026-11",
        "identifier": [{"value": "2026-11-20"}],
    }
    assert shift_dates("2026-11-20T10:00:00+02:00", -1) == "2026-11-19T10:00:00+02:00"


def test_metadata_is_an_r4_capability_statement(client: httpx.Client) -> None:
    answer = client.get("/fhir/metadata")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/fhir+json")
    body = answer.json()
    assert (body["resourceType"], body["fhirVersion"]) == ("CapabilityStatement", "4.0.1")
    types = {r["type"]: r for r in body["rest"][0]["resource"]}
    for rtype in (
        "Patient",
        "Observation",
        "Condition",
        "Procedure",
        "MedicationStatement",
        "ServiceRequest",
    ):
        assert {"read", "search-type"} <= {i["code"] for i in types[rtype]["interaction"]}, rtype


def test_patient_read_and_search(client: httpx.Client) -> None:
    patient = client.get("/fhir/Patient/demo-cauda-equina", headers={"Accept": "application/json+fhir"})
    assert patient.status_code == 200 and patient.json()["id"] == "demo-cauda-equina"
    everyone = client.get("/fhir/Patient").json()
    assert everyone["type"] == "searchset" and everyone["total"] == len(everyone["entry"]) >= 12
    family = patient.json()["name"][0]["family"]
    assert "demo-cauda-equina" in _ids(
        client.get("/fhir/Patient", params={"name": family[:4].lower()}).json()
    )
    by_identifier = client.get("/fhir/Patient", params={"identifier": "urn:lumbar-cds:demo|demo-mscc"}).json()
    assert _ids(by_identifier) == ["demo-mscc"]
    missing = client.get("/fhir/Patient/nobody")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_search_by_patient_and_code_by_get_and_by_post(client: httpx.Client) -> None:
    conditions = client.get("/fhir/Condition", params={"patient": "demo-cauda-equina"}).json()
    assert conditions["total"] >= 1
    assert all(
        e["resource"]["subject"]["reference"] == "Patient/demo-cauda-equina" for e in conditions["entry"]
    )
    assert all(e["fullUrl"].startswith(f"{client.base_url}/fhir/Condition/") for e in conditions["entry"])
    query = {"patient": "Patient/demo-cauda-equina", "code": f"{SNOMED}|279039007,{LOINC}|8310-5"}
    got = client.get("/fhir/Condition", params=query).json()
    posted = client.post(
        "/fhir/Condition/_search",
        content="&".join(f"{k}={v}" for k, v in sorted(query.items())),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ).json()
    assert _ids(got) == _ids(posted) != []
    assert all(any(c["code"] == "279039007" for c in e["resource"]["code"]["coding"]) for e in got["entry"])
    other = client.get(
        "/fhir/Condition", params={"patient": "demo-cauda-equina", "code": f"{LOINC}|279039007"}
    )
    assert other.json()["total"] == 0  # a code matches on its system too


def test_paging_follows_next_links_to_every_match(client: httpx.Client) -> None:
    total = client.get("/fhir/Observation").json()["total"]
    assert total > 7
    seen: list[str] = []
    url: str | None = "/fhir/Observation?_count=7"
    while url:
        page = client.get(url).json()
        assert len(page["entry"]) <= 7
        seen += _ids(page)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen)) == total


def test_date_status_and_category_filters(client: httpx.Client) -> None:
    everything = client.get("/fhir/Observation", params={"patient": "demo-spinal-infection"}).json()
    recent = client.get(
        "/fhir/Observation",
        params={
            "patient": "demo-spinal-infection",
            "date": f"ge{datetime.now(UTC).date() - timedelta(days=30)}",
        },
    ).json()
    old = client.get(
        "/fhir/Observation", params={"patient": "demo-spinal-infection", "date": "lt2000-01-01"}
    ).json()
    assert 0 < recent["total"] <= everything["total"] and old["total"] == 0
    final = client.get(
        "/fhir/Observation", params={"patient": "demo-spinal-infection", "status": "final"}
    ).json()
    assert final["total"] == everything["total"]
    active = client.get("/fhir/Condition", params={"clinical-status": "active"}).json()
    assert active["total"] >= 1


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/fhir/Observation?colour=blue", 400),  # unsupported: refused, not ignored
        ("/fhir/Observation?code:text=pain", 400),
        ("/fhir/Observation?_count=many", 400),
        ("/fhir/Observation?_count=-1", 400),
        ("/fhir/Observation?date=yesterday", 400),
        ("/fhir/Condition?status=active", 400),  # Condition has clinical-status
        ("/fhir/Spaceship", 404),
        ("/fhir/Spaceship/1", 404),
    ],
)
def test_what_it_cannot_answer_is_a_clear_operation_outcome(
    client: httpx.Client, url: str, status: int
) -> None:
    answer = client.get(url)
    assert answer.status_code == status
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert answer.json()["issue"][0]["diagnostics"]


def test_it_is_read_only(client: httpx.Client) -> None:
    for answer in (
        client.post("/fhir/Patient", json={"resourceType": "Patient"}),
        client.put("/fhir/Patient/demo-mscc", json={"resourceType": "Patient", "id": "demo-mscc"}),
        client.delete("/fhir/Patient/demo-mscc"),
    ):
        assert answer.status_code == 405
    assert client.get("/fhir/Patient/demo-mscc").status_code == 200


def test_cors_for_the_browser(client: httpx.Client) -> None:
    origin = {"Origin": "http://127.0.0.1:8080"}
    assert client.get("/fhir/metadata", headers=origin).headers["access-control-allow-origin"] == "*"
    preflight = client.options(
        "/fhir/Condition/_search", headers=builders.preflight("POST", "content-type", origin["Origin"])
    )
    assert preflight.status_code == 200


def test_every_prefetch_template_of_the_service_is_answered(client: httpx.Client, ruleset: RuleSet) -> None:
    for hook, templates in ruleset.prefetch.items():
        for key, template in templates.items():
            query = template.replace("{{context.patientId}}", "demo-cauda-equina")
            answer = client.get(f"/fhir/{query}")
            assert answer.status_code == 200, (hook, key, answer.text)


def _write(folder: Path, name: str, data: Any) -> None:
    (folder / name).write_text(json.dumps(data))


def test_broken_demo_files_are_named(tmp_path: Path) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    _write(
        tmp_path, "a.json", {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
    )
    assert load_demo(tmp_path).count() == 1
    _write(tmp_path, "b.json", patient)
    with pytest.raises(DemoDataError, match=r"b\.json: Patient/p1 is also in a\.json"):
        load_demo(tmp_path)
    (tmp_path / "b.json").unlink()
    _write(
        tmp_path, "c.json", {"resourceType": "Observation", "id": "o1", "code": {"text": "x"}}
    )  # no status
    with pytest.raises(DemoDataError, match=r"c\.json: Observation/o1: not valid FHIR"):
        load_demo(tmp_path)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(DemoDataError, match=r"c\.json: not JSON"):
        load_demo(tmp_path)


def test_the_command_refuses_a_broken_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "demo-fhir", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no *.json files" in done.stderr


def test_the_demo_patients_ship_in_the_package() -> None:
    """``lumbar demo-fhir`` works from an installed wheel or the container: pyproject lists the files."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = root / "service"
    shipped = {p for pattern in patterns["service"] for p in package.glob(pattern)}
    assert set(BUNDLED_DEMO.glob("*.json")) <= shipped
