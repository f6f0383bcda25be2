"""ICD-10-CM codes and spans of the catalogue checked against the official code set (``lumbar check``).

The CMS release comes with the PyPI package ``simple-icd-10-cm``. It takes seconds to load, so it is read
only here, by ``lumbar check``, never when the service starts: the service matches spans by the prefix
order that :func:`rules.engine.codes.terminology.icd_in` defines, and this check proves that order agrees with
the official one for every span written in the catalogue.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Iterable
from functools import cache
from typing import Any

from rules.engine.codes.terminology import IcdSpan, icd_compact, icd_dotted, icd_in, icd_span
from rules.engine.model.diagnostics import Diagnostic


@cache
def _release() -> Any:
    with warnings.catch_warnings():  # it reads its data through a deprecated importlib.resources call
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm  # seconds to import: only for ``lumbar check``

    return simple_icd_10_cm


@cache
def _codes() -> tuple[str, ...]:
    """Every category and subcategory of the release, compact (no dot), in the official order."""
    release = _release()
    return tuple(code for code in release.get_all_codes(False) if release.is_category_or_subcategory(code))


@cache
def _lexical() -> tuple[str, ...]:
    """The same codes sorted as strings, for the prefix order of :func:`icd_in`."""
    return tuple(sorted(_codes()))


def _by_prefix(span: IcdSpan) -> set[str]:
    """The codes of the release that :func:`icd_in` puts in ``span``: a slice of the sorted codes, since
    every code whose first ``len(first)`` characters lie between the ends sorts between ``first`` and
    ``last`` followed by anything."""
    first, last = span
    codes = _lexical()
    start = bisect.bisect_left(codes, first)
    end = bisect.bisect_right(codes, last + "\uffff")
    return {code for code in codes[start:end] if icd_in(code, span)}


def _known(code: str) -> bool:
    release = _release()
    dotted = icd_dotted(code)
    return bool(release.is_valid_item(dotted)) and bool(release.is_category_or_subcategory(dotted))


def official_members(span: IcdSpan) -> set[str]:
    """The codes of the release a span holds in the official order: from its first code to the last
    code below its last one."""
    first, last = span
    codes = _codes()
    try:
        start, end = codes.index(first), codes.index(last)
    except ValueError:
        return set()
    held = set(codes[start : end + 1])
    # and the descendants of the last end, which follow it in the official order
    for code in codes[end + 1 :]:
        if not code.startswith(last):
            break
        held.add(code)
    return held


def check_icd(refs: Iterable[tuple[str, Diagnostic]]) -> list[Diagnostic]:
    """A diagnostic for every code or span not in the release, or whose prefix order takes in other
    codes than the official order (``D37-D49`` would also take in ``D3A``)."""
    problems: list[Diagnostic] = []
    order = {code: index for index, code in enumerate(_codes())}
    for entry, where in refs:
        first, last = span = icd_span(entry)
        missing = [end for end in dict.fromkeys((first, last)) if not _known(end)]
        if missing:
            shown = ", ".join(icd_dotted(m) for m in missing)
            problems.append(_at(where, f"ICD-10-CM {shown} is not a code of the official code set"))
            continue
        if first == last:
            continue
        official = official_members(span)
        by_prefix = _by_prefix(span)
        extra = sorted(by_prefix - official, key=order.__getitem__)
        lost = sorted(official - by_prefix, key=order.__getitem__)
        if extra or lost:
            named = ", ".join(icd_dotted(c) for c in (extra or lost)[:5])
            what = "also takes in" if extra else "misses"
            problems.append(
                _at(
                    where,
                    f"ICD-10-CM range {entry}: by prefix it {what} {named}, unlike the official order;"
                    " split the range",
                )
            )
    return problems


def description(code: str) -> str | None:
    """The official description of a code, for ``lumbar check`` messages and the docs."""
    release = _release()
    dotted = icd_dotted(code)
    return str(release.get_description(dotted)) if release.is_valid_item(dotted) else None


def _at(where: Diagnostic, message: str) -> Diagnostic:
    return Diagnostic(where.path, where.line, where.column, message)


__all__ = ["check_icd", "description", "icd_compact", "official_members"]
