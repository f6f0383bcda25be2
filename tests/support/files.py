"""Editing copies of files in tests (a copied rule catalogue, mostly)."""

from __future__ import annotations

from pathlib import Path


def edit(path: Path, old: str, new: str) -> None:
    """Replace the first ``old`` in ``path`` with ``new``; ``old`` must be there (a stale test fails)."""
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
