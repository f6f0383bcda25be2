"""`lumbar check` against the official ICD-10-CM code set (the CMS release in simple-icd-10-cm)."""

from __future__ import annotations

import pytest

from rules.engine.codes.icd10cm import _by_prefix, _codes, check_icd, description, official_members
from rules.engine.codes.terminology import icd_in, icd_span
from rules.engine.model.diagnostics import Diagnostic

WHERE = Diagnostic("rules/catalog/valuesets/x.yaml", 7, 5, "")


def _check(entry: str) -> list[str]:
    return [d.render() for d in check_icd([(entry, WHERE)])]


@pytest.mark.parametrize("entry", ["M54.50", "M5450", "C79.51", "C76-C79", "M46.2", "A17-A18", "G83.4"])
def test_codes_and_ranges_of_the_release_pass(entry: str) -> None:
    assert _check(entry) == []


def test_a_code_that_is_not_in_the_release_is_named_where_it_is_written() -> None:
    assert _check("M54.7") == [
        "rules/catalog/valuesets/x.yaml:7:5: error: ICD-10-CM M54.7 is not a code of the official code set"
    ]


@pytest.mark.parametrize(("entry", "taken_in"), [("D37-D49", "D3A"), ("C76-C80", "C7A")])
def test_a_range_whose_prefix_order_differs_from_the_official_one(entry: str, taken_in: str) -> None:
    """By prefix these would also take in the neuroendocrine tumours (D3A, C7A), which the official
    order puts elsewhere: the range must be split."""
    (message,) = _check(entry)
    assert f"ICD-10-CM range {entry}: by prefix it also takes in {taken_in}" in message
    assert message.endswith("unlike the official order; split the range")


def test_official_members_follow_the_release_order() -> None:
    members = official_members(icd_span("C76-C80"))
    assert {"C76", "C79", "C7951", "C80", "C801"} <= members
    assert not {"C75", "C81", "C7A", "C7A0"} & members
    assert description("C79.51") == "Secondary malignant neoplasm of bone"


@pytest.mark.parametrize("entry", ["C76-C80", "D37-D49", "M46.2-M46.5", "A17-A18", "S32.0-S32.2", "Z85"])
def test_the_prefix_slice_is_the_prefix_order(entry: str) -> None:
    """The sorted slice finds exactly the codes a full pass with ``icd_in`` finds."""
    span = icd_span(entry)
    assert _by_prefix(span) == {code for code in _codes() if icd_in(code, span)}
