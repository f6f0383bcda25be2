"""What compiled conditions run against (``EvalContext``) and compile against (``CompileEnv``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cds_hooks.response import INDICATOR_RANK
from rules.engine.codes.terminology import Terminology, ValueSet
from rules.engine.model.diagnostics import did_you_mean
from rules.engine.model.schema import Definition
from rules.engine.record.facts import Episode, Evidence
from rules.engine.record.patient import PatientRecord

if TYPE_CHECKING:  # the compiled rules are built from this module's types
    from rules.engine.compiler.ruleset import CompiledRule

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


@dataclass(eq=False)
class EvalContext:
    """One evaluation: the record, the clock, the hook, the rules, and what has been resolved so far.
    Rules are resolved on demand and once each (``holds``, ``indicator``), whether the evaluator asks or
    another rule's condition does (``rule:``, ``red_flags``)."""

    record: PatientRecord
    now: datetime
    hook: str
    back_pain: ValueSet  # the gate value set, which also dates the pain episode
    rules: Mapping[str, CompiledRule]
    red_flag_rules: tuple[tuple[str, str], ...] = ()  # (rule id, the highest indicator it can reach)
    # For reassuring cards (``evaluation.sufficiency``): the value sets the red-flag rules read, and the
    # hook's red-flag screening (``RuleSet.screening``: the resource types its red-flag rules read, how many).
    recognised: frozenset[str] = frozenset()
    screening: tuple[frozenset[str], int] = (frozenset(), 0)
    notes: set[str] = field(default_factory=set)
    memo: dict[str, list[Evidence] | None] = field(default_factory=dict)
    indicators: dict[str, str | None] = field(default_factory=dict)
    escalation_evidence: dict[str, list[Evidence]] = field(default_factory=dict)
    answers: dict[Check, list[Evidence] | None] = field(default_factory=dict)  # shared queries' results
    _episode: list[Episode | None] = field(default_factory=list)

    def holds(self, rule_id: str) -> list[Evidence] | None:
        """The evidence that makes the rule's ``when`` true (before precedence), or None."""
        memo = self.memo
        if rule_id not in memo:
            rule = self.rules[rule_id]
            memo[rule_id] = rule.check(self) if rule.may_fire(self.record.present()) else None
        return memo[rule_id]

    def indicator(self, rule_id: str) -> str | None:
        """The rule's effective indicator, its escalations applied; None when it does not hold. What made
        it more urgent is kept as evidence for its card (``escalation_evidence``)."""
        if rule_id not in self.indicators:
            level: str | None = None
            if self.holds(rule_id) is not None:
                rule = self.rules[rule_id]
                level = rule.indicator
                for escalation in rule.escalations:
                    if INDICATOR_ORDER[escalation.indicator] <= INDICATOR_ORDER[level]:
                        continue
                    why = escalation.when(self)
                    if why is not None:
                        level = escalation.indicator
                        self.escalation_evidence[rule_id] = why
            self.indicators[rule_id] = level
        return self.indicators[rule_id]

    def resolve_episode(self) -> Episode | None:
        """The current low back pain episode, computed once per evaluation."""
        if not self._episode:
            self._episode.append(self.record.episode(self.back_pain))
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
    # The named conditions ``is:`` may use (definitions.yaml and the file's own ``define:``), and the
    # names this rule used, nested ones included.
    definitions: dict[str, Definition] = field(default_factory=dict)
    used_definitions: set[str] = field(default_factory=set)
    expanding: list[str] = field(default_factory=list)  # the definitions being compiled, outermost first

    def valueset(self, name: str, path: DataPath) -> ValueSet | None:
        self.used.add(name)
        found = self.valuesets.get(name)
        if found is None:
            self.report(path, f"unknown value set {name!r}", did_you_mean(name, self.valuesets))
        return found
