"""`lumbar explain` completes a request the way the service does: a request that relies on its fhirServer
gets the same verdicts; without the data it says which keys it lacks and exits non-zero."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from tests.support import builders
from tests.support.fhir_server import FhirTestServer

NOW = "2026-11-21T10:00:00Z"


def _explain(
    tmp_path: Path, request: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    capsys.readouterr()
    code = main(["explain", str(path), "--now", NOW])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_a_request_that_relies_on_its_fhir_server_is_explained_from_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fhir_server: FhirTestServer,
) -> None:
    fhir_server.resources = builders.lbp_patient_with_retention()
    monkeypatch.setenv("LUMBAR_FHIR_ALLOWLIST", fhir_server.base_url)
    code, out, err = _explain(tmp_path, builders.hook_request(fhir_server=fhir_server.base_url), capsys)
    assert code == 0, err
    assert "fired           rf-ces-sphincter-disturbance [critical]" in out
    assert "[critical] Suspected cauda equina syndrome" in out
    assert "missing data" not in err
    assert fhir_server.requests  # it asked the server, as the service would


def test_without_the_server_it_names_the_missing_data_and_exits_non_zero(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fhir_server: FhirTestServer,
) -> None:
    fhir_server.resources = builders.lbp_patient_with_retention()
    monkeypatch.delenv("LUMBAR_FHIR_ALLOWLIST", raising=False)
    code, out, err = _explain(tmp_path, builders.hook_request(fhir_server=fhir_server.base_url), capsys)
    assert code == 3
    why = f"the FHIR server {fhir_server.base_url} is not in LUMBAR_FHIR_ALLOWLIST"
    assert f"missing data: prefetch 'patient': {why}" in err
    assert "refused: nothing about the patient could be read" in err
    assert "card(s)" not in out  # no reassuring "0 cards"
    assert not fhir_server.requests


def test_a_complete_prefetch_needs_no_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = list(builders.PATIENT_VIEW_KEYS)
    request = builders.hook_request(
        prefetch=builders.prefetch_for(builders.lbp_patient_with_retention(), keys)
    )
    code, out, err = _explain(tmp_path, request, capsys)
    assert code == 0, err
    assert "1 card(s):" in out and err == ""
