"""`lumbar serve` with a bad setting: one line naming the setting, a non-zero exit within seconds, whatever
the number of workers; and a worker whose start-up fails stops the server instead of restarting in a loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.preflight import SUPERVISOR_ENV, worker_failed

pytestmark = pytest.mark.e2e


def _serve(tmp_path: Path, env: dict[str, str], workers: int = 2) -> tuple[int, list[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "9", "--workers", str(workers)],
        env={**os.environ, "LUMBAR_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    return done.returncode, done.stderr.strip().splitlines(), time.monotonic() - started


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_clients_file_is_one_line_and_no_worker_starts(tmp_path: Path, workers: int) -> None:
    (tmp_path / "clients.yaml").write_text("clients:\n  - {issuer: https://ehr.example.org}\n")
    env = {"LUMBAR_AUTH": "jwt", "LUMBAR_CLIENTS_FILE": str(tmp_path / "clients.yaml")}
    code, lines, took = _serve(tmp_path, env, workers)
    assert code != 0 and took < 15
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: LUMBAR_CLIENTS_FILE: ") and "neither keys nor a jku" in lines[0]


def test_an_unreachable_database_is_one_line_naming_the_setting_without_its_password(tmp_path: Path) -> None:
    env = {"LUMBAR_AUTH": "off", "LUMBAR_DATABASE_URL": "postgresql+asyncpg://lumbar:s3cr3t-pw@127.0.0.1:1/x"}
    code, lines, took = _serve(tmp_path, env)
    assert code != 0 and took < 15
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: LUMBAR_DATABASE_URL: cannot use the database at ")
    assert "s3cr3t-pw" not in lines[0] and "127.0.0.1:1" in lines[0]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("LUMBAR_CORS_ORIGINS", "https://sandbox.cds-hooks.org/app", "not an origin"),
        ("LUMBAR_FHIR_ALLOWLIST", "ftp://fhir.example.org", "not a FHIR base URL"),
        ("LUMBAR_RULES_DIR", "/no/such/catalogue", "the rules directory does not exist"),
    ],
)
def test_other_bad_settings_are_refused_before_any_worker(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    code, lines, took = _serve(tmp_path, {"LUMBAR_AUTH": "off", name: value})
    assert code != 0 and took < 15
    assert any(expected in line for line in lines), lines
    assert not any(line.startswith("Traceback") for line in lines), lines


def test_a_worker_that_cannot_start_stops_the_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As if the clients file broke between the check and a worker's start: the worker says why in one line
    and signals the supervisor, which stops the server instead of restarting the worker for ever."""
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        monkeypatch.setenv(SUPERVISOR_ENV, str(supervisor.pid))
        from service.auth import ClientsFileError

        with pytest.raises(SystemExit) as stopped:
            worker_failed(ClientsFileError("clients.yaml: client x has neither keys nor a jku"))
        assert stopped.value.code == 3
        assert supervisor.wait(timeout=10) == -signal.SIGTERM
    finally:
        supervisor.kill()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: LUMBAR_CLIENTS_FILE: clients.yaml: client x has neither keys nor a jku"]
