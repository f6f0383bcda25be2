"""The bundled rule catalogue, loaded once per test session (tests that edit it work on a copy)."""

from __future__ import annotations

from functools import cache

from rules import BUNDLED_CATALOG
from rules.engine.compiler.ruleset import RuleSet, load_ruleset


@cache
def bundled_ruleset() -> RuleSet:
    """The bundled catalogue, compiled; immutable, so every test may share it."""
    return load_ruleset(BUNDLED_CATALOG)
