"""Editing copies of files in tests (a copied rule catalogue, mostly)."""

from __future__ import annotations

from pathlib import Path


def edit(path: Path, old: str, new: str) -> None:
    """Replace the first ``old`` in ``path`` with ``new``; ``old`` must be there (a stale test fails)."""
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    """The 1-based number of the first line of ``path`` that contains ``needle``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def has_error(errors: list[str], where: str, *parts: str) -> bool:
    """Whether one of the rendered diagnostics is located at ``where`` (``file.yaml:LINE:``) and says
    every one of ``parts``."""
    return any(where in error and all(part in error for part in parts) for error in errors)
