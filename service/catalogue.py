"""The CDS services this deployment offers, derived from the loaded rule set.

One service per hook. Everything derived from a rule set (the discovery document, the prefetch templates)
is built once into a :class:`Catalogue`, and a reload replaces the whole object in one assignment, so a
request never sees half of an old rule set and half of a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from cds_hooks.response import CdsService, Discovery
from rules.engine import RuleSet, failing_cases, load_ruleset


@dataclass(frozen=True)
class ServiceSpec:
    id: str
    hook: str
    title: str
    description: str


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "lumbar-patient-view",
        "patient-view",
        "Lumbar CDS: low back pain review",
        "Red flags (cauda equina syndrome, cancer, infection, fracture, progressive neurological "
        "deficit), suggested tests and referrals for a patient with low back pain or lower-back "
        "weakness, when the chart is opened.",
    ),
    ServiceSpec(
        "lumbar-encounter-start",
        "encounter-start",
        "Lumbar CDS: low back pain at encounter start",
        "The same low back pain review, when an encounter starts.",
    ),
    ServiceSpec(
        "lumbar-order-select",
        "order-select",
        "Lumbar CDS: lumbar imaging order check",
        "Red flags for a patient with low back pain while orders are being selected.",
    ),
    ServiceSpec(
        "lumbar-order-sign",
        "order-sign",
        "Lumbar CDS: lumbar imaging order sign check",
        "Red flags for a patient with low back pain before orders are signed.",
    ),
)


@dataclass(frozen=True, eq=False)
class Catalogue:
    ruleset: RuleSet
    hooks: dict[str, str]  # service id -> hook
    discovery: bytes  # the discovery document, serialised once

    def templates(self, hook: str) -> dict[str, str]:
        return self.ruleset.prefetch.get(hook, {})


def build_catalogue(ruleset: RuleSet) -> Catalogue:
    """Derive the services and their discovery document from a rule set."""
    services = []
    for spec in SERVICES:
        if not ruleset.rules_for(spec.hook):
            continue
        count = len(ruleset.rules_for(spec.hook))
        services.append(
            CdsService(
                hook=spec.hook,
                id=spec.id,
                title=spec.title,
                description=spec.description,
                prefetch=ruleset.prefetch.get(spec.hook, {}),
                usage_requirements=(
                    "Acts only for patients with low back pain, sciatica or lower-back weakness "
                    "in the record. "
                    f"{count} rules; rule-set version {ruleset.version}."
                ),
                extension={"lumbar-cds": {"rulesetVersion": ruleset.version}},
            )
        )
    discovery = orjson.dumps(Discovery(services=tuple(services)).to_wire())
    return Catalogue(ruleset, {s.id: s.hook for s in services}, discovery)


class RuleTestsFailed(Exception):
    """The catalogue is valid but some of its own embedded tests fail: it must not answer hook calls."""

    def __init__(self, failures: tuple[str, ...]) -> None:
        super().__init__(f"{len(failures)} embedded test case(s) fail")
        self.failures = failures


def load_tested(directory: Path, *, allow_failing_tests: bool = False) -> tuple[RuleSet, tuple[str, ...]]:
    """Load the catalogue at ``directory`` and run its embedded tests: the rule set and the failing cases.

    Raises:
        RuleSetError: the catalogue is invalid.
        RuleTestsFailed: some of its tests fail, unless ``allow_failing_tests``.
    """
    ruleset = load_ruleset(directory)
    failures = failing_cases(ruleset)
    if failures and not allow_failing_tests:
        raise RuleTestsFailed(failures)
    return ruleset, failures
