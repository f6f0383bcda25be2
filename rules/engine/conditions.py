"""Compiling a rule's ``when`` into a Python closure, once, at load time.

Each node becomes ``check(ctx) -> list[Evidence] | None``: ``None`` when the condition is false, otherwise
the evidence that made it true (possibly empty, e.g. for ``not``). Value sets, units and durations are
resolved here, so evaluating a request does no lookups by name and cannot meet a typo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from rules.engine import schema
from rules.engine.diagnostics import did_you_mean
from rules.engine.record import INTERPRETATION, Episode, Evidence, Fact, PatientRecord
from rules.engine.terminology import CodeKey, Terminology, ValueSet
from rules.engine.units import convert, known_target

Check = Callable[["EvalContext"], list[Evidence] | None]
DataPath = tuple[str | int, ...]

_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1), "y": timedelta(days=365)}
_HIGH_FLAGS = frozenset({(INTERPRETATION, "H"), (INTERPRETATION, "HH")})


def parse_duration(text: str) -> timedelta:
    """``14d`` → 14 days (``h``, ``d``, ``w``; ``y`` is 365 days)."""
    return int(text[:-1]) * _UNITS[text[-1]]


class RuleResolver(Protocol):
    def __call__(self, ctx: EvalContext, rule_id: str) -> list[Evidence] | None: ...


@dataclass(eq=False)
class EvalContext:
    """Everything one evaluation needs: the record, the clock, the hook, and memoised rule results."""

    record: PatientRecord
    now: datetime
    hook: str
    context: ValueSet
    resolve_rule: RuleResolver
    notes: set[str] = field(default_factory=set)
    memo: dict[str, list[Evidence] | None] = field(default_factory=dict)
    _episode: list[Episode | None] = field(default_factory=list)

    def resolve_episode(self) -> Episode | None:
        """The current low back pain episode, computed once per evaluation."""
        if not self._episode:
            self._episode.append(self.record.episode(self.context))
        return self._episode[0]


@dataclass
class CompileEnv:
    """What the compiler resolves names against, and where it reports problems."""

    valuesets: dict[str, ValueSet]
    terminology: Terminology
    report: Callable[[DataPath, str, str | None], None]
    reads: set[str] = field(default_factory=set)  # value sets this rule reads (for prefetch)
    reads_medications: set[str] = field(default_factory=set)
    reads_orders: set[str] = field(default_factory=set)
    rule_refs: list[tuple[str, DataPath]] = field(default_factory=list)

    def valueset(self, name: str, path: DataPath) -> ValueSet | None:
        found = self.valuesets.get(name)
        if found is None:
            self.report(path, f"unknown value set {name!r}", did_you_mean(name, self.valuesets))
        return found


def _false(_: EvalContext) -> list[Evidence] | None:
    return None


def _compare(value: float, gt: float | None, gte: float | None, lt: float | None, lte: float | None) -> bool:
    return (
        (gt is None or value > gt)
        and (gte is None or value >= gte)
        and (lt is None or value < lt)
        and (lte is None or value <= lte)
    )


def compile_condition(node: schema.Condition, path: DataPath, env: CompileEnv) -> Check:
    """Compile one condition node (and its children) into a closure."""
    if node.all is not None:
        return _all([compile_condition(c, (*path, "all", i), env) for i, c in enumerate(node.all)])
    if node.any is not None:
        return _any([compile_condition(c, (*path, "any", i), env) for i, c in enumerate(node.any)])
    if node.not_ is not None:
        return _not(compile_condition(node.not_, (*path, "not"), env))
    if node.at_least is not None:
        kids = [
            compile_condition(c, (*path, "at_least", "of", i), env) for i, c in enumerate(node.at_least.of)
        ]
        if node.at_least.count > len(kids):
            env.report((*path, "at_least", "count"), "count is larger than the number of conditions", None)
        return _at_least(node.at_least.count, kids)
    if node.finding is not None:
        return _finding(node.finding, (*path, "finding"), env)
    if node.quantity is not None:
        return _quantity(node.quantity, (*path, "quantity"), env)
    if node.age is not None:
        return _age(node.age)
    if node.gender is not None:
        return _gender(node.gender)
    if node.episode is not None:
        return _episode(node.episode)
    if node.medication is not None:
        return _medication(node.medication, (*path, "medication"), env)
    if node.order is not None:
        return _order(node.order, (*path, "order"), env)
    if node.rule is not None:
        env.rule_refs.append((node.rule, (*path, "rule")))
        return _rule(node.rule)
    assert node.hook is not None  # the schema guarantees exactly one key
    return _hook(frozenset(node.hook))


def _all(checks: list[Check]) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        out: list[Evidence] = []
        for check in checks:
            found = check(ctx)
            if found is None:
                return None
            out.extend(found)
        return out

    return run


def _any(checks: list[Check]) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        out: list[Evidence] | None = None
        for check in checks:  # every branch runs, so the card cites all the evidence
            found = check(ctx)
            if found is not None:
                out = (out or []) + found
        return out

    return run


def _not(check: Check) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        return [] if check(ctx) is None else None

    return run


def _at_least(count: int, checks: list[Check]) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        out: list[Evidence] = []
        hits = 0
        for check in checks:
            found = check(ctx)
            if found is not None:
                hits += 1
                out.extend(found)
        return out if hits >= count else None

    return run


def _valuesets(
    names: str | list[str], path: DataPath, env: CompileEnv, into: set[str] | None = None
) -> list[ValueSet]:
    listed = [names] if isinstance(names, str) else names
    found: list[ValueSet] = []
    for index, name in enumerate(listed):
        vs = env.valueset(name, path if isinstance(names, str) else (*path, index))
        if vs is not None:
            found.append(vs)
            (env.reads if into is None else into).add(name)
    return found


def _bilateral(facts: list[Fact]) -> list[Fact]:
    both = [f for f in facts if {"left", "right"} <= f.laterality]
    if both:
        return both
    left = [f for f in facts if f.laterality == {"left"}]
    right = [f for f in facts if f.laterality == {"right"}]
    return left + right if left and right else []


def _codes(refs: list[str] | None, path: DataPath, env: CompileEnv) -> frozenset[CodeKey]:
    keys: set[CodeKey] = set()
    for index, ref in enumerate(refs or ()):
        key, problem = env.terminology.resolve(ref)
        if key is None:
            env.report((*path, index), problem or "unknown code", None)
        else:
            keys.add(key)
    return frozenset(keys)


def _finding(q: schema.FindingQuery, path: DataPath, env: CompileEnv) -> Check:
    valuesets = _valuesets(q.valueset, (*path, "valueset"), env)
    within = parse_duration(q.within) if q.within else None
    interpretation = _codes(q.interpretation, (*path, "interpretation"), env)

    def run(ctx: EvalContext) -> list[Evidence] | None:
        record = ctx.record
        chosen: list[Fact] = []
        for vs in valuesets:
            for fact in record.facts_in(vs):
                if fact.present is not q.present or fact in chosen:
                    continue
                if q.resource is not None and fact.resource_type != q.resource:
                    continue
                if not q.history and not fact.current:
                    continue
                if within is not None and not record.seen_within(fact, within):
                    continue
                if q.new and not record.is_new(fact):
                    continue
                if interpretation and not (fact.interpretation & interpretation):
                    continue
                if q.laterality in ("left", "right") and q.laterality not in fact.laterality:
                    continue
                chosen.append(fact)
        if q.laterality == "bilateral":
            chosen = _bilateral(chosen)
        elif q.laterality == "unilateral" and _bilateral(chosen):
            return None
        return [fact.evidence() for fact in chosen] or None

    return run


def _quantity(q: schema.QuantityQuery, path: DataPath, env: CompileEnv) -> Check:
    valuesets = _valuesets(q.valueset, (*path, "valueset"), env)
    if not known_target(q.unit):
        env.report((*path, "unit"), f"unknown UCUM unit {q.unit!r}", None)
        return _false
    within = parse_duration(q.within) if q.within else None

    def run(ctx: EvalContext) -> list[Evidence] | None:
        found: list[Evidence] = []
        record = ctx.record
        for vs in valuesets:
            for fact in record.facts_in(vs):
                if fact.quantity is None or (within is not None and not record.seen_within(fact, within)):
                    continue
                raw, unit = fact.quantity
                value = convert(raw, unit, q.unit)
                if value is None:
                    ctx.notes.add(f"{fact.reference}: unit {unit!r} cannot be compared in {q.unit}; ignored")
                    continue
                if q.plausible is not None and not q.plausible[0] <= value <= q.plausible[1]:
                    ctx.notes.add(f"{fact.reference}: implausible value {raw:g} {unit}; ignored")
                    continue
                if not _quantity_matches(q, value, fact):
                    continue
                shown = f"{value:.4g} {q.unit}"
                if unit != q.unit:
                    shown += f" ({raw:g} {unit})"
                found.append(fact.evidence(shown))
        return found or None

    return run


def _quantity_matches(q: schema.QuantityQuery, value: float, fact: Fact) -> bool:
    if not q.above_range:
        return _compare(value, q.gt, q.gte, q.lt, q.lte)
    if fact.reference_high is not None:
        high = convert(
            fact.reference_high[0], fact.reference_high[1] or (fact.quantity or (0, None))[1], q.unit
        )
        if high is not None:
            return value > high
    if fact.interpretation & _HIGH_FLAGS:
        return True
    return (q.gt is not None or q.gte is not None) and _compare(value, q.gt, q.gte, None, None)


def _age(q: schema.AgeQuery) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        age = ctx.record.age()
        if age is None or not _compare(age, q.gt, q.gte, q.lt, q.lte):
            return None
        patient = ctx.record.patient
        born = patient.birth_date if patient is not None else None
        return [Evidence("Age", f"{age} years", born, ctx.record.patient_reference())]

    return run


def _gender(gender: str) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        if ctx.record.gender() != gender:
            return None
        return [Evidence("Administrative gender", gender, None, ctx.record.patient_reference())]

    return run


def _episode(q: schema.EpisodeQuery) -> Check:
    bounds = [parse_duration(b) if b else None for b in (q.gt, q.gte, q.lt, q.lte)]

    def run(ctx: EvalContext) -> list[Evidence] | None:
        episode = ctx.resolve_episode()
        if episode is None:
            return [] if q.known is False else None
        if q.known is False:
            return None
        gt, gte, lt, lte = bounds
        length = episode.length
        if (
            (gt is not None and not length > gt)
            or (gte is not None and not length >= gte)
            or (lt is not None and not length < lt)
            or (lte is not None and not length <= lte)
        ):
            return None
        return [episode.evidence()]

    return run


def _medication(q: schema.MedicationQuery, path: DataPath, env: CompileEnv) -> Check:
    valuesets = _valuesets(q.valueset, (*path, "valueset"), env, env.reads_medications)
    minimum = parse_duration(q.min_duration) if q.min_duration else None
    keys = frozenset().union(*(vs.keys for vs in valuesets)) if valuesets else frozenset()

    def run(ctx: EvalContext) -> list[Evidence] | None:
        record = ctx.record
        found = []
        for med in record.medications:
            if not (set(med.codes) & keys) or not record.medication_counts(med):
                continue
            if minimum is not None and (med.start is None or med.start > ctx.now - minimum):
                continue
            found.append(Evidence(med.label, med.status, med.date_text, med.reference, med.codes[0]))
        return found or None

    return run


def _order(q: schema.OrderQuery, path: DataPath, env: CompileEnv) -> Check:
    valuesets = _valuesets(q.valueset, (*path, "valueset"), env, env.reads_orders)
    keys = frozenset().union(*(vs.keys for vs in valuesets)) if valuesets else frozenset()
    statuses = frozenset(q.status)
    within = parse_duration(q.within) if q.within else None

    def run(ctx: EvalContext) -> list[Evidence] | None:
        record = ctx.record
        pool = (record.drafts if "draft" in statuses else []) + record.orders
        found = []
        for order in pool:
            if order.status not in statuses or not (set(order.codes) & keys):
                continue
            if within is not None and (order.when is None or order.when < ctx.now - within):
                continue
            found.append(
                Evidence(order.label, order.status, order.date_text, order.reference, order.codes[0])
            )
        return found or None

    return run


def _rule(rule_id: str) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        return ctx.resolve_rule(ctx, rule_id)

    return run


def _hook(hooks: frozenset[str]) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        return [] if ctx.hook in hooks else None

    return run
