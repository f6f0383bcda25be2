"""Code systems, the verified code list, and compiled value sets.

A code is matched on system and code together, never on the code string alone (knowledge base Part E:
``2157-6`` is both a LOINC lab and a CDC race code).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

CodeKey = tuple[str, str]
"""(system URI, code)."""

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"

SYSTEM_ALIASES: dict[str, str] = {
    # HL7 OIDs of the code systems, as EHRs that convert CDA to FHIR send them. Source: the FHIR R4 naming
    # system table (hl7.org/fhir/R4/namingsystem-terminologies.html) and US Core's code-system list (github
    # HL7/US-Core input/data/codesystem-ref-all-list.csv). No other URI form was found in a public source.
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "urn:oid:2.16.840.1.113883.6.12": CPT,
}
"""Other names for the code systems the rules read, mapped to their canonical FHIR URI on input."""


def icd_compact(code: str) -> str:
    """An ICD-10-CM code without its dot, upper case: ``m54.16`` → ``M5416``."""
    return code.strip().upper().replace(".", "")


def icd_dotted(code: str) -> str:
    """An ICD-10-CM code in its official dotted form: ``M5416`` → ``M54.16``, ``M54`` → ``M54``."""
    compact = icd_compact(code)
    return f"{compact[:3]}.{compact[3:]}" if len(compact) > 3 else compact


def normal_key(system: str, code: str) -> CodeKey:
    """A coding as the rules match it: the canonical system URI, and ICD-10-CM codes in dotted form."""
    system = SYSTEM_ALIASES.get(system, system)
    if system == ICD10CM:
        return system, icd_dotted(code)
    return system, code.strip()


IcdSpan = tuple[str, str]
"""An ICD-10-CM hierarchy entry as compact codes (first, last): a code and all its descendants when
first == last, else every code from ``first`` to ``last`` with their descendants (see :func:`icd_in`)."""


def icd_span(entry: str) -> IcdSpan:
    """``C00-C96`` → (``C00``, ``C96``); ``M54.1`` → (``M541``, ``M541``)."""
    first, _, last = entry.partition("-")
    return icd_compact(first), icd_compact(last or first)


def icd_in(compact: str, span: IcdSpan) -> bool:
    """Whether a compact ICD-10-CM code lies in a span: its first ``len(first)`` characters sort between
    the span's ends. ``lumbar check`` verifies that this order agrees with the official code order for
    every span in the catalogue (``D37-D49`` would also take in ``D3A``, unlike the official order)."""
    first, last = span
    return len(compact) >= len(first) and first <= compact[: len(first)] <= last


def verhoeff_ok(digits: str) -> bool:
    """The Verhoeff check digit of a SNOMED CT identifier (the SNOMED CT technical guide, 6.1.3)."""
    if not digits.isdigit():
        return False
    check = 0
    for i, ch in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(ch)]]
    return check == 0


def loinc_ok(code: str) -> bool:
    """The mod-10 check digit of a LOINC code (``NNNNN-C``; LOINC users' guide, appendix)."""
    body, _, digit = code.partition("-")
    if not (body.isdigit() and len(digit) == 1 and digit.isdigit()):
        return False
    odd = "".join(ch for i, ch in enumerate(reversed(body)) if i % 2 == 0)[::-1]
    even = "".join(ch for i, ch in enumerate(reversed(body)) if i % 2 == 1)[::-1]
    total = sum(int(ch) for ch in str(int(odd) * 2)) + sum(int(ch) for ch in even)
    return (10 - total % 10) % 10 == int(digit)


_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


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
    icd: tuple[IcdSpan, ...] = ()  # ICD-10-CM codes with their descendants, and ranges of them
    negation: re.Pattern[str] | None = None  # text that negates a text match ("no history of cancer")
    text_in: frozenset[str] = frozenset({"Observation", "Condition"})  # resource types whose text counts

    @cached_property  # read per fact and per draft order on the request path
    def keys(self) -> frozenset[CodeKey]:
        """Every code listed one by one that can make a resource a member (body-site-qualified ones
        included); ICD-10-CM hierarchy entries are matched by :meth:`contains`."""
        return self.codes | frozenset(self.sited)

    def contains(self, key: CodeKey) -> bool:
        """Whether a (normalised) code is a member: listed, or within one of the ICD-10-CM entries."""
        if key in self.keys:
            return True
        if self.icd and key[0] == ICD10CM:
            compact = icd_compact(key[1])
            return any(icd_in(compact, span) for span in self.icd)
        return False

    def any_of(self, keys: tuple[CodeKey, ...] | list[CodeKey] | frozenset[CodeKey]) -> CodeKey | None:
        """The first of ``keys`` that is a member, if any."""
        return next((key for key in keys if self.contains(key)), None)

    def named_in(self, text: str, resource_type: str | None = None) -> bool:
        """Whether ``text`` names this value set's concept (its patterns match and no negation does), in
        a resource of a type whose text counts for it."""
        if resource_type is not None and resource_type not in self.text_in:
            return False
        if self.text is None or not text or not self.text.search(text):
            return False
        return self.negation is None or not self.negation.search(text)


@dataclass(frozen=True)
class ValueSetIndex:
    """Value sets by the codes and text that make a fact a member: which value sets a record touches is
    then one pass over its facts, instead of one pass over every value set's codes."""

    by_code: dict[CodeKey, tuple[str, ...]] = field(default_factory=dict)
    sited: dict[CodeKey, tuple[tuple[str, frozenset[CodeKey]], ...]] = field(default_factory=dict)
    text: tuple[ValueSet, ...] = ()  # the value sets with text patterns
    icd: tuple[tuple[str, IcdSpan], ...] = ()  # (value set, ICD-10-CM span)
    # By resource type, the finding value sets whose text counts in it (a search per set: Python's re tries
    # every branch of one joined pattern at every position, which costs more than the separate searches).
    text_by_type: dict[str, tuple[ValueSet, ...]] = field(default_factory=dict)

    def named_by_text(self, text: str, resource_type: str | None) -> Iterator[ValueSet]:
        """The value sets whose concept ``text`` names in a resource of this type (None: every set with
        text, as a medication's text is read)."""
        sets = self.text if resource_type is None else self.text_by_type.get(resource_type, ())
        return (vs for vs in sets if vs.named_in(text))

    def icd_names(self, key: CodeKey) -> list[str]:
        """The value sets whose ICD-10-CM hierarchy entries hold ``key``."""
        if key[0] != ICD10CM or not self.icd:
            return []
        compact = icd_compact(key[1])
        return [name for name, span in self.icd if icd_in(compact, span)]

    @classmethod
    def build(
        cls, valuesets: dict[str, ValueSet], medication_sets: frozenset[str] = frozenset()
    ) -> ValueSetIndex:
        """``medication_sets`` are read from medications only, whose text counts whatever ``text_in`` says."""
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
            tuple(vs for vs in valuesets.values() if vs.text is not None),
            tuple((name, span) for name, vs in valuesets.items() for span in vs.icd),
            _text_by_type([vs for name, vs in valuesets.items() if name not in medication_sets]),
        )


def _text_by_type(findings: list[ValueSet]) -> dict[str, tuple[ValueSet, ...]]:
    texted = [vs for vs in findings if vs.text is not None]
    types = sorted({kind for vs in texted for kind in vs.text_in})
    return {kind: tuple(vs for vs in texted if kind in vs.text_in) for kind in types}
