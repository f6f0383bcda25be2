"""Conditions that query the record: findings, measurements, weight loss, medications and orders."""

from __future__ import annotations

from datetime import timedelta

from rules.engine.codes.terminology import CodeKey, ValueSet
from rules.engine.codes.units import convert, human_quantity, known_target
from rules.engine.compiler.context import Check, CompileEnv, DataPath, EvalContext, parse_duration
from rules.engine.model import schema
from rules.engine.record.facts import INTERPRETATION, Evidence, Fact

_HIGH_FLAGS = frozenset({(INTERPRETATION, "H"), (INTERPRETATION, "HH")})


def _false(_: EvalContext) -> list[Evidence] | None:
    return None


def compare(value: float, gt: float | None, gte: float | None, lt: float | None, lte: float | None) -> bool:
    return (
        (gt is None or value > gt)
        and (gte is None or value >= gte)
        and (lt is None or value < lt)
        and (lte is None or value <= lte)
    )


def valuesets(
    names: str | list[str], path: DataPath, env: CompileEnv, into: set[str] | None = None
) -> list[ValueSet]:
    """Resolve value-set names (reporting unknown ones) and record them as read by the rule."""
    listed = [names] if isinstance(names, str) else names
    found: list[ValueSet] = []
    for index, name in enumerate(listed):
        vs = env.valueset(name, path if isinstance(names, str) else (*path, index))
        if vs is not None:
            found.append(vs)
            (env.reads if into is None else into).add(name)
    return found


def codes(refs: list[str] | None, path: DataPath, env: CompileEnv) -> frozenset[CodeKey]:
    keys: set[CodeKey] = set()
    for index, ref in enumerate(refs or ()):
        key, problem = env.terminology.resolve(ref)
        if key is None:
            env.report((*path, index), problem or "unknown code", None)
        else:
            keys.add(key)
    return frozenset(keys)


def _bilateral(facts: list[Fact]) -> list[Fact]:
    both = [f for f in facts if {"left", "right"} <= f.laterality]
    if both:
        return both
    left = [f for f in facts if f.laterality == {"left"}]
    right = [f for f in facts if f.laterality == {"right"}]
    return left + right if left and right else []


def _spread(facts: list[Fact]) -> timedelta:
    times = [f.onset.start for f in facts if f.onset is not None]
    return max(times) - min(times) if len(times) > 1 else timedelta(0)


def finding(q: schema.FindingQuery, path: DataPath, env: CompileEnv) -> Check:
    """Observations, Conditions or Procedures from value sets, filtered as the query says (Part B)."""
    sets = valuesets(q.valueset, (*path, "valueset"), env)
    within = parse_duration(q.within) if q.within else None
    older = parse_duration(q.older_than) if q.older_than else None
    spread = parse_duration(q.spread) if q.spread else None
    interpretation = codes(q.interpretation, (*path, "interpretation"), env)
    value_set = env.valueset(q.value, (*path, "value")) if q.value else None

    def run(ctx: EvalContext) -> list[Evidence] | None:
        record = ctx.record
        episode = ctx.resolve_episode() if q.within_episode else None
        if q.within_episode and episode is None:
            return None
        chosen: list[Fact] = []
        via: dict[int, str] = {}  # the value set that made each chosen fact a member
        for vs in sets:
            for fact in record.facts_in(vs):
                if fact.present is not q.present or id(fact) in via:
                    continue
                if q.resource is not None and fact.resource_type != q.resource:
                    continue
                if not q.history and not fact.current:
                    continue
                if within is not None and not record.seen_within(fact, within):
                    continue
                if q.new and not record.is_new(fact):
                    continue
                if older is not None and not record.persisting(fact, older):
                    continue
                if q.ongoing and not record.is_ongoing(fact):
                    continue
                if episode is not None and (fact.last_seen is None or fact.last_seen < episode.start):
                    continue
                if interpretation and not (fact.interpretation & interpretation):
                    continue
                if value_set is not None and not (fact.value_codes & value_set.keys):
                    continue
                if q.laterality in ("left", "right") and q.laterality not in fact.laterality:
                    continue
                chosen.append(fact)
                via[id(fact)] = vs.name
        if q.laterality == "bilateral":
            chosen = _bilateral(chosen)
        elif q.laterality == "unilateral" and _bilateral(chosen):
            return None
        if q.min_records is not None and len(chosen) < q.min_records:
            return None
        if spread is not None and _spread(chosen) <= spread:
            return None
        return [record.evidence_of(fact, via[id(fact)]) for fact in chosen] or None

    return run


def quantity(q: schema.QuantityQuery, path: DataPath, env: CompileEnv) -> Check:
    """A measured value, converted to the query's unit; implausible values are noted and ignored."""
    sets = valuesets(q.valueset, (*path, "valueset"), env)
    if not known_target(q.unit):
        env.report((*path, "unit"), f"unknown UCUM unit {q.unit!r}", None)
        return _false
    within = parse_duration(q.within) if q.within else None

    def run(ctx: EvalContext) -> list[Evidence] | None:
        found: list[Evidence] = []
        record = ctx.record
        episode = ctx.resolve_episode() if q.within_episode else None
        if q.within_episode and episode is None:
            return None
        for vs in sets:
            for fact in record.facts_in(vs):
                if fact.quantity is None or (within is not None and not record.seen_within(fact, within)):
                    continue
                if episode is not None and (fact.last_seen is None or fact.last_seen < episode.start):
                    continue
                raw, unit = fact.quantity
                value = convert(raw, unit, q.unit)
                if value is None:
                    ctx.notes.add(f"{fact.reference}: unit {unit!r} cannot be compared in {q.unit}; ignored")
                    continue
                if q.plausible is not None and not q.plausible[0] <= value <= q.plausible[1]:
                    ctx.notes.add(f"{fact.reference}: implausible value {raw:g} {unit or ''}; ignored")
                    continue
                if not _quantity_matches(q, value, fact):
                    continue
                shown = human_quantity(value, q.unit)
                if unit and unit != q.unit:
                    shown += f" ({human_quantity(raw, unit)})"
                found.append(record.evidence_of(fact, vs.name, shown))
        return found or None

    return run


def _quantity_matches(q: schema.QuantityQuery, value: float, fact: Fact) -> bool:
    if not q.above_range:
        return compare(value, q.gt, q.gte, q.lt, q.lte)
    if fact.reference_high is not None:
        unit = fact.reference_high[1] or (fact.quantity[1] if fact.quantity else None)
        high = convert(fact.reference_high[0], unit, q.unit)
        if high is not None:
            return value > high
    if fact.interpretation & _HIGH_FLAGS:
        return True
    return (q.gt is not None or q.gte is not None) and compare(value, q.gt, q.gte, None, None)


def weight_loss(q: schema.WeightLossQuery, path: DataPath, env: CompileEnv) -> Check:
    """The latest recent weight against an earlier one: a loss of at least ``percent`` (R07)."""
    sets = valuesets(q.valueset, (*path, "valueset"), env)
    min_gap, max_gap, recent = (parse_duration(d) for d in (q.min_gap, q.max_gap, q.recent))

    def run(ctx: EvalContext) -> list[Evidence] | None:
        weights: list[tuple[float, Fact]] = []
        for vs in sets:
            for fact in ctx.record.facts_in(vs):
                if fact.quantity is None or fact.onset is None:
                    continue
                kilograms = convert(fact.quantity[0], fact.quantity[1], "kg")
                if kilograms is not None and 1 <= kilograms <= 400:
                    weights.append((kilograms, fact))
        if not weights:
            return None
        weights.sort(key=lambda item: item[1].onset.start if item[1].onset else ctx.now)
        latest_kg, latest = weights[-1]
        assert latest.onset is not None
        if latest.onset.end < ctx.now - recent:
            return None
        for earlier_kg, earlier in weights[:-1]:
            assert earlier.onset is not None
            gap = latest.onset.start - earlier.onset.start
            if min_gap <= gap <= max_gap and (earlier_kg - latest_kg) / earlier_kg * 100 >= q.percent:
                loss = (earlier_kg - latest_kg) / earlier_kg * 100
                return [
                    earlier.evidence(f"{earlier_kg:.1f} kg"),
                    latest.evidence(f"{latest_kg:.1f} kg (a loss of {loss:.0f}% in {gap.days} days)"),
                ]
        return None

    return run


def medication(q: schema.MedicationQuery, path: DataPath, env: CompileEnv) -> Check:
    """MedicationStatements that count (Part B1), coded from the value set or named as its text patterns
    say (product codes such as "prednisone 5 MG Oral Tablet" need no ingredient lookup then)."""
    sets = valuesets(q.valueset, (*path, "valueset"), env, env.reads_medications)
    minimum = parse_duration(q.min_duration) if q.min_duration else None

    def run(ctx: EvalContext) -> list[Evidence] | None:
        record = ctx.record
        found = []
        for med in record.medications:
            listed = any(vs.any_of(med.codes) or vs.named_in(med.text) for vs in sets)
            if not listed or not record.medication_counts(med):
                continue
            if minimum is not None and (med.start is None or med.start > ctx.now - minimum):
                continue
            found.append(med.evidence())
        return found or None

    return run


def order(q: schema.OrderQuery, path: DataPath, env: CompileEnv) -> Check:
    sets = valuesets(q.valueset, (*path, "valueset"), env, env.reads_orders)
    keys = frozenset().union(*(vs.keys for vs in sets)) if sets else frozenset()
    statuses = frozenset(q.status)
    within = parse_duration(q.within) if q.within else None

    def run(ctx: EvalContext) -> list[Evidence] | None:
        record = ctx.record
        since = ctx.now - within if within is not None else None
        if q.within_episode:
            episode = ctx.resolve_episode()
            if episode is None:
                return None
            since = max(since, episode.start) if since is not None else episode.start
        pool = (record.drafts if "draft" in statuses else []) + record.orders
        found = []
        for item in pool:
            if item.status not in statuses or not (set(item.codes) & keys):
                continue
            if since is not None and item.status != "draft" and (item.when is None or item.when < since):
                continue
            found.append(item.evidence())
        return found or None

    return run
