"""Golden tests: each invalid catalogue under tests/golden/cases prints exactly its expected `lumbar check`.

See tests/golden/README.md; LUMBAR_UPDATE_GOLDEN=1 rewrites the expected files after a deliberate change.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from service.cli import main

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p for p in (GOLDEN / "cases").iterdir() if p.is_dir())


def _catalogue(case: Path, root: Path) -> Path:
    target = root / "catalog"
    shutil.copytree(GOLDEN / "base", target)
    for source in case.rglob("*.yaml"):
        destination = target / source.relative_to(case)
        if source.read_text().strip() == "DELETE":
            destination.unlink()
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, destination)
    return target


def _check(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    monkeypatch.chdir(root)
    code = main(["check", "catalog"])
    return code, capsys.readouterr().out


def test_the_base_catalogue_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(GOLDEN / "base", tmp_path / "catalog")
    code, out = _check(tmp_path, monkeypatch, capsys)
    assert code == 0, out
    assert main(["test", "catalog"]) == 0


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_error_output(
    case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _catalogue(case, tmp_path)
    code, out = _check(tmp_path, monkeypatch, capsys)
    expected_file = case / "expected.txt"
    if os.environ.get("LUMBAR_UPDATE_GOLDEN"):
        expected_file.write_text(f"exit {code}\n{out}")
    assert f"exit {code}\n{out}" == expected_file.read_text()


def test_a_changed_message_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The comparison is exact: a golden file with one word changed does not match."""
    case = GOLDEN / "cases" / "unknown-value-set"
    _catalogue(case, tmp_path)
    code, out = _check(tmp_path, monkeypatch, capsys)
    altered = (case / "expected.txt").read_text().replace("unknown value set", "unknown valueset")
    assert f"exit {code}\n{out}" != altered
