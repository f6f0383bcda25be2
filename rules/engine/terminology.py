"""Code systems, the verified code list, and compiled value sets.

A code is matched on system and code together, never on the code string alone (knowledge base Part E:
``2157-6`` is both a LOINC lab and a CDC race code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

CodeKey = tuple[str, str]
"""(system URI, code)."""


@dataclass(frozen=True)
class Terminology:
    """System aliases (``snomed`` → ``http://snomed.info/sct``) and the display of every allowed code."""

    systems: dict[str, str]
    displays: dict[CodeKey, str]
    equivalents: dict[CodeKey, frozenset[CodeKey]] = field(default_factory=dict)

    def split(self, ref: str) -> tuple[str | None, str]:
        """``snomed:123`` → (system URI or None when the alias is unknown, code)."""
        alias, _, code = ref.partition(":")
        return self.systems.get(alias), code

    def resolve(self, ref: str) -> tuple[CodeKey | None, str | None]:
        """Resolve an ``alias:code`` reference against the verified list.

        Returns:
            (key, None) when the code is listed; (None, message) otherwise, the message saying why.
        """
        system, code = self.split(ref)
        if system is None:
            alias = ref.partition(":")[0]
            return None, f"unknown code system {alias!r} (known: {', '.join(sorted(self.systems))})"
        key = (system, code)
        if key not in self.displays:
            return None, f"code {ref!r} is not in the project's terminology list (terminology.yaml)"
        return key, None

    def display(self, key: CodeKey) -> str:
        return self.displays.get(key, key[1])

    def same_test(self, key: CodeKey) -> frozenset[CodeKey]:
        """The codes that order the same test as ``key`` (``same_test`` groups), ``key`` included."""
        return self.equivalents.get(key, frozenset({key}))

    def canonical(self, key: CodeKey) -> CodeKey:
        """One representative of ``key``'s group, to de-duplicate suggestions."""
        return min(self.same_test(key))


@dataclass(frozen=True)
class ValueSet:
    """A compiled value set: plain codes, codes that count only with a body site, and text patterns."""

    name: str
    title: str
    codes: frozenset[CodeKey]
    sited: dict[CodeKey, frozenset[CodeKey]] = field(default_factory=dict)
    text: re.Pattern[str] | None = None
    resources: frozenset[str] = frozenset({"Observation", "Condition"})

    @cached_property  # read per fact and per draft order on the request path
    def keys(self) -> frozenset[CodeKey]:
        """Every code that can make a resource a member (body-site-qualified ones included)."""
        return self.codes | frozenset(self.sited)


@dataclass(frozen=True)
class ValueSetIndex:
    """Value sets by the codes and text that make a fact a member: which value sets a record touches is
    then one pass over its facts, instead of one pass over every value set's codes."""

    by_code: dict[CodeKey, tuple[str, ...]] = field(default_factory=dict)
    sited: dict[CodeKey, tuple[tuple[str, frozenset[CodeKey]], ...]] = field(default_factory=dict)
    text: tuple[tuple[str, re.Pattern[str]], ...] = ()

    @classmethod
    def build(cls, valuesets: dict[str, ValueSet]) -> ValueSetIndex:
        by_code: dict[CodeKey, list[str]] = {}
        sited: dict[CodeKey, list[tuple[str, frozenset[CodeKey]]]] = {}
        for name, vs in valuesets.items():
            for key in vs.codes:
                by_code.setdefault(key, []).append(name)
            for key, sites in vs.sited.items():
                sited.setdefault(key, []).append((name, sites))
        return cls(
            {k: tuple(v) for k, v in by_code.items()},
            {k: tuple(v) for k, v in sited.items()},
            tuple((name, vs.text) for name, vs in valuesets.items() if vs.text is not None),
        )
