"""Compiling a rule's ``when`` into a Python closure, once, at load time.

Each node becomes ``check(ctx) -> list[Evidence] | None``: ``None`` when the condition is false, otherwise
the evidence that made it true (possibly empty, e.g. for ``not``). Value sets, units and durations are
resolved here, so evaluating a request does no lookups by name and cannot meet a typo.

Rules ask the record the same questions (the bundled catalogue has 124 distinct record queries among 212
uses). A query leaf (finding, quantity, weight loss, medication, order) is compiled for every rule that
uses it, so each rule still records what it reads and gets its own diagnostics, but the rule set keeps one
closure per query text, and an evaluation answers each one once (``EvalContext.answers``). The evidence
lists checks return are therefore shared: callers build new lists and never change one in place.
"""

from __future__ import annotations

from typing import Any

from rules.engine.compiler import queries
from rules.engine.compiler.context import (
    INDICATOR_ORDER,
    Check,
    CompileEnv,
    DataPath,
    Description,
    EvalContext,
    Needs,
    parse_duration,
)
from rules.engine.model import schema
from rules.engine.model.diagnostics import cycles, did_you_mean
from rules.engine.record.facts import MEDICATIONS, ORDERS, Evidence


def compile_condition(node: schema.Condition, path: DataPath, env: CompileEnv) -> Check:
    """Compile one condition node (and its children) into a closure, and record how it reads and what
    it needs in the record (``env.needs``)."""
    check, text, children = _compile(node, path, env)
    env.descriptions[check] = Description(text, tuple(children))
    env.needs[check] = _needs(node, [env.needs[child] for child in children])
    return check


def _needs(node: schema.Condition, kids: list[Needs]) -> Needs:
    """A necessary condition on the record for ``node`` to be true (see ``context.Needs``). Sound by
    construction: ``all`` needs what each child needs; ``any`` (and ``at_least``) needs one clause of
    some child, so the union of one clause from each child; ``not`` and the leaves that read no
    coded record need nothing. Unknown value-set names are left out (the loader reports them)."""
    if node.all is not None:
        return tuple(clause for kid in kids for clause in kid)
    if node.is_ is not None:
        return kids[0] if kids else ()
    if node.any is not None or (node.at_least is not None and node.at_least.count > 0):
        if not kids or any(not kid for kid in kids):
            return ()
        return (frozenset().union(*(min(kid, key=len) for kid in kids)),)
    query = node.finding or node.quantity or node.weight_loss
    if query is not None:
        names = [query.valueset] if isinstance(query.valueset, str) else query.valueset
        return (frozenset(names),)
    if node.medication is not None:
        return (frozenset({MEDICATIONS}),)
    if node.order is not None:
        return (frozenset({ORDERS}),)
    return ()


def _flow(value: Any) -> str:
    """A compact, YAML-like rendering of a query, as the rule author wrote it."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _leaf(node: schema.Condition) -> str:
    data = node.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)
    return ", ".join(f"{key}: {_flow(value)}" for key, value in data.items())


def _compile(node: schema.Condition, path: DataPath, env: CompileEnv) -> tuple[Check, str, list[Check]]:
    if node.all is not None:
        kids = [compile_condition(c, (*path, "all", i), env) for i, c in enumerate(node.all)]
        return _all(kids), "all of", kids
    if node.any is not None:
        kids = [compile_condition(c, (*path, "any", i), env) for i, c in enumerate(node.any)]
        return _any(kids), "any of", kids
    if node.not_ is not None:
        kid = compile_condition(node.not_, (*path, "not"), env)
        return _not(kid), "not", [kid]
    if node.is_ is not None:
        return _named(node.is_, path, env)
    if node.at_least is not None:
        kids = [
            compile_condition(c, (*path, "at_least", "of", i), env) for i, c in enumerate(node.at_least.of)
        ]
        if node.at_least.count > len(kids):
            env.report((*path, "at_least", "count"), "count is larger than the number of conditions", None)
        return _at_least(node.at_least.count, kids), f"at least {node.at_least.count} of", kids
    check = _compile_leaf(node, path, env)
    if env.shared is not None and _SHARED_QUERIES.intersection(node.model_fields_set):
        same = repr(node.model_dump(exclude_unset=True))  # the query exactly, types included
        check = env.shared.setdefault(same, _answered_once(check))
    return check, _leaf(node), []


def _named(name: str, path: DataPath, env: CompileEnv) -> tuple[Check, str, list[Check]]:
    """``is: <name>``: the named condition, compiled here as part of this rule (so the rule reads its
    value sets and gets its prefetch). Its own problems are reported once, where it is defined
    (``check_definitions``); what it asks of other rules is located at this ``is:``."""
    text = f"is {name}"
    definition = env.definitions.get(name)
    if definition is None:
        env.report((*path, "is"), f"unknown definition {name!r}", did_you_mean(name, env.definitions))
        return _never, text, []
    if name in env.expanding:  # a cycle: reported where the definitions are checked
        return _never, text, []
    env.used_definitions.add(name)
    report, refs, flags = env.report, len(env.rule_refs), len(env.uses_red_flags)
    env.report = _quiet
    env.expanding.append(name)
    try:
        kid = compile_condition(definition.when, ("define", name, "when"), env)
    finally:
        env.report = report
        env.expanding.pop()
    here: DataPath = (*path, "is")
    env.rule_refs[refs:] = [(ref, here) for ref, _ in env.rule_refs[refs:]]
    env.uses_red_flags[flags:] = [(here, minimum) for _, minimum in env.uses_red_flags[flags:]]

    def run(ctx: EvalContext) -> list[Evidence] | None:
        return kid(ctx)

    return run, text, [kid]


def _never(ctx: EvalContext) -> list[Evidence] | None:
    return None


def _quiet(where: DataPath, message: str, help: str | None) -> None:
    pass


def references(node: schema.Condition) -> set[str]:
    """The definitions a condition names with ``is:``, at any depth (not through other definitions)."""
    if node.is_ is not None:
        return {node.is_}
    kids = (
        node.all
        or node.any
        or ([node.not_] if node.not_ else [])
        or (node.at_least.of if node.at_least else [])
    )
    return set().union(*(references(kid) for kid in kids))


def check_definitions(definitions: dict[str, schema.Definition], own: set[str], env: CompileEnv) -> None:
    """Compile each of ``own`` definitions on its own, reporting its problems where it is written
    (``("define", name, ...)`` through ``env.report``), and report the cycles among the definitions
    that pass through one of them."""
    for name in sorted(own):
        env.expanding = [name]
        compile_condition(definitions[name].when, ("define", name, "when"), env)
    env.expanding = []
    graph = {name: references(d.when) for name, d in definitions.items()}
    for cycle in cycles(graph):
        if own.intersection(cycle):
            start = min(own.intersection(cycle))
            turn = cycle.index(start)
            shown = [*cycle[turn:], *cycle[:turn], start]
            env.report(("define", start, "when"), f"cycle in definitions: {' -> '.join(shown)}", None)


# The leaves that query the record; the others are cheaper than a lookup (age, gender, hook, episode) or
# are memoised by rule already (rule, red_flags).
_SHARED_QUERIES = frozenset({"finding", "quantity", "weight_loss", "medication", "order"})


def _answered_once(check: Check) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        answers = ctx.answers
        if run in answers:
            return answers[run]
        found = answers[run] = check(ctx)
        return found

    return run


def _compile_leaf(node: schema.Condition, path: DataPath, env: CompileEnv) -> Check:
    if node.finding is not None:
        return queries.finding(node.finding, (*path, "finding"), env)
    if node.quantity is not None:
        return queries.quantity(node.quantity, (*path, "quantity"), env)
    if node.weight_loss is not None:
        return queries.weight_loss(node.weight_loss, (*path, "weight_loss"), env)
    if node.medication is not None:
        return queries.medication(node.medication, (*path, "medication"), env)
    if node.order is not None:
        return queries.order(node.order, (*path, "order"), env)
    if node.age is not None:
        return _age(node.age, at_onset=False)
    if node.age_at_onset is not None:
        return _age(node.age_at_onset, at_onset=True)
    if node.gender is not None:
        return _gender(node.gender)
    if node.episode is not None:
        return _episode(node.episode)
    if node.red_flags is not None:
        env.uses_red_flags.append(((*path, "red_flags"), node.red_flags.min_indicator))
        return _red_flags(node.red_flags.min_indicator)
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


def _age(q: schema.AgeQuery, *, at_onset: bool) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        when = None
        if at_onset:
            episode = ctx.resolve_episode()
            if episode is None:
                return None
            when = episode.start
        age = ctx.record.age(when)
        if age is None or not queries.compare(age, q.gt, q.gte, q.lt, q.lte):
            return None
        patient = ctx.record.patient
        born = patient.birth_date if patient is not None else None
        label = "Age when the pain began" if at_onset else "Age"
        shown = f"{age} years (born {born[:10]})" if born else f"{age} years"
        return [Evidence(label, shown, None, ctx.record.patient_reference())]

    return run


def _gender(gender: str) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        if ctx.record.gender() != gender:
            return None
        return [Evidence("Administrative gender", gender, None, ctx.record.patient_reference())]

    return run


def _episode(q: schema.EpisodeQuery) -> Check:
    gt, gte, lt, lte = (parse_duration(b) if b else None for b in (q.gt, q.gte, q.lt, q.lte))

    def run(ctx: EvalContext) -> list[Evidence] | None:
        episode = ctx.resolve_episode()
        if episode is None:
            return [] if q.known is False else None
        if q.known is False:
            return None
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


def _red_flags(minimum: str) -> Check:
    floor = INDICATOR_ORDER[minimum]

    def run(ctx: EvalContext) -> list[Evidence] | None:
        for rule_id, reach in ctx.red_flag_rules:
            if INDICATOR_ORDER[reach] < floor:
                continue  # can never reach the asked level (and may be the asking rule itself)
            indicator = ctx.indicator(rule_id)
            if indicator is not None and INDICATOR_ORDER[indicator] >= floor:
                return []
        return None

    return run


def _rule(rule_id: str) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        return ctx.holds(rule_id)

    return run


def _hook(hooks: frozenset[str]) -> Check:
    def run(ctx: EvalContext) -> list[Evidence] | None:
        return [] if ctx.hook in hooks else None

    return run
