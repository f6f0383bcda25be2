"""What compiled conditions run against (``EvalContext``) and compile against (``CompileEnv``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from cds_hooks.response import INDICATOR_RANK
from rules.engine.diagnostics import did_you_mean
from rules.engine.facts import Episode, Evidence
from rules.engine.record import PatientRecord
from rules.engine.terminology import Terminology, ValueSet

INDICATOR_ORDER = INDICATOR_RANK  # how urgent each card indicator is

Check = Callable[["EvalContext"], list[Evidence] | None]
"""A compiled condition: the evidence that makes it true, or None when it is false."""
DataPath = tuple[str | int, ...]

Needs = tuple[frozenset[str], ...]
"""What a condition needs in the record to have any chance of being true, in conjunctive form: every
clause must meet the record in at least one atom. An atom is a value-set name (some fact is coded from,
or named as, that value set), ``facts.MEDICATIONS`` or ``facts.ORDERS``. ``()`` needs nothing (e.g.
``not``, ``age``)."""

_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1), "y": timedelta(days=365)}


def parse_duration(text: str) -> timedelta:
    """``14d`` → 14 days (``h``, ``d``, ``w``; ``y`` is 365 days)."""
    return int(text[:-1]) * _UNITS[text[-1]]


class RuleResolver(Protocol):
    def __call__(self, ctx: EvalContext, rule_id: str) -> list[Evidence] | None: ...


class IndicatorResolver(Protocol):
    def __call__(self, ctx: EvalContext, rule_id: str) -> str | None: ...


@dataclass(eq=False)
class EvalContext:
    """Everything one evaluation needs: the record, the clock, the hook, and memoised rule results."""

    record: PatientRecord
    now: datetime
    hook: str
    context: ValueSet
    resolve_rule: RuleResolver
    resolve_indicator: IndicatorResolver
    red_flag_rules: tuple[tuple[str, str], ...] = ()  # (rule id, the highest indicator it can reach)
    # For reassuring cards (``rules.engine.sufficiency``): the value sets the red-flag rules read, and the
    # hook's red-flag screening (``RuleSet.screening``: the resource types its red-flag rules read, how many).
    recognised: frozenset[str] = frozenset()
    screening: tuple[frozenset[str], int] = (frozenset(), 0)
    notes: set[str] = field(default_factory=set)
    memo: dict[str, list[Evidence] | None] = field(default_factory=dict)
    indicators: dict[str, str | None] = field(default_factory=dict)
    escalation_evidence: dict[str, list[Evidence]] = field(default_factory=dict)
    answers: dict[Check, list[Evidence] | None] = field(default_factory=dict)  # shared queries' results
    _episode: list[Episode | None] = field(default_factory=list)

    def resolve_episode(self) -> Episode | None:
        """The current low back pain episode, computed once per evaluation."""
        if not self._episode:
            self._episode.append(self.record.episode(self.context))
        return self._episode[0]


@dataclass(frozen=True)
class Description:
    """How a compiled condition reads in the rule file, and its sub-conditions (for explanations)."""

    text: str
    children: tuple[Check, ...] = ()


@dataclass
class CompileEnv:
    """What the compiler resolves names against, where it reports problems, and what the rule reads."""

    valuesets: dict[str, ValueSet]
    terminology: Terminology
    report: Callable[[DataPath, str, str | None], None]
    reads: set[str] = field(default_factory=set)  # value sets read as findings (Observation, Condition)
    reads_medications: set[str] = field(default_factory=set)
    reads_orders: set[str] = field(default_factory=set)
    rule_refs: list[tuple[str, DataPath]] = field(default_factory=list)
    uses_red_flags: list[tuple[DataPath, str]] = field(default_factory=list)  # (where, min_indicator)
    descriptions: dict[Check, Description] = field(default_factory=dict)  # for `lumbar explain`
    needs: dict[Check, Needs] = field(default_factory=dict)  # see ``Needs``

    used: set[str] = field(default_factory=set)  # every value set this rule names, for the unused lint
    # The rule set's record queries by their text, shared by every rule that asks the same question (see
    # ``conditions``); None: no sharing (a file checked on its own).
    shared: dict[str, Check] | None = None

    def valueset(self, name: str, path: DataPath) -> ValueSet | None:
        self.used.add(name)
        found = self.valuesets.get(name)
        if found is None:
            self.report(path, f"unknown value set {name!r}", did_you_mean(name, self.valuesets))
        return found
