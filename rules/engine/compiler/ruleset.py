"""Loading a rule catalogue: parse, validate, resolve, compile, cross-check; every error reported at once.

Catalogue layout (``LUMBAR_RULES_DIR``)::

    terminology.yaml        the codes rules and value sets may use
    valuesets/<name>.yaml   one value set per file, name = file stem
    definitions.yaml        named conditions any rule may use (``is: <name>``); optional
    precedence.yaml         precedence tiers (``tier: <name>``) and what each suppresses; optional
    <rule-id>.yaml          one rule per file, id = file stem

:func:`load_ruleset` returns a :class:`RuleSet` or raises :class:`RuleSetError` carrying every diagnostic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rules.engine.codes.terminology import CodeKey, Terminology, ValueSet, ValueSetIndex
from rules.engine.compiler.conditions import check_definitions, compile_condition
from rules.engine.compiler.context import (
    INDICATOR_ORDER,
    Check,
    CompileEnv,
    DataPath,
    Description,
    EvalContext,
    Needs,
)
from rules.engine.compiler.prefetch import prefetch_templates
from rules.engine.evaluation.cards import CardTemplate
from rules.engine.evaluation.sufficiency import MEDICATION_TYPES, Reassurance, compile_reassurance
from rules.engine.evaluation.suggestions import Modifier
from rules.engine.model import schema
from rules.engine.model.diagnostics import Diagnostic, RuleSetError, cycles, did_you_mean
from rules.engine.model.loader import CompiledEscalation, Loader
from rules.engine.model.source import SourceDocument
from rules.engine.record.normalise import RecordBuilder

BACK_PAIN_VALUESET = "low-back-pain"
"""The value set that gates every rule (knowledge base Part B4) and defines the pain episode."""
CHRONIC_VALUESET = "chronic-low-back-pain"
"""Pain recorded as chronic: the episode has lasted at least 12 weeks whatever the record's date."""
DEFINITIONS_FILE = "definitions.yaml"
PRECEDENCE_FILE = "precedence.yaml"
NOT_RULES = frozenset({"terminology.yaml", DEFINITIONS_FILE, PRECEDENCE_FILE})
"""The catalogue's files at its top level that are not rule files."""


@dataclass(frozen=True, eq=False)
class CompiledRule:
    id: str
    title: str
    category: str
    indicator: str
    hooks: frozenset[str]
    check: Check
    card: CardTemplate | None
    consolidate_into: str | None
    suppresses: tuple[tuple[str, str], ...]  # (rule id, the indicator from which it applies), tiers resolved
    tests: tuple[schema.TestCase, ...]
    path: str
    document: SourceDocument
    reads: frozenset[str]
    reads_medications: frozenset[str]
    reads_orders: frozenset[str]
    rule_refs: tuple[str, ...]
    knowledge_base: str
    escalations: tuple[CompiledEscalation, ...] = ()
    modifier: Modifier | None = None
    pama_rating: ValueSet | None = None
    descriptions: dict[Check, Description] = field(default_factory=dict)
    uses: frozenset[str] = frozenset()  # every value set the rule names
    needs: Needs = ()  # what ``when`` needs in the record to be true at all (see ``context.Needs``)
    reassurance: Reassurance | None = (
        None  # given only on sufficient data (``rules.engine.evaluation.sufficiency``)
    )
    tier: str | None = None  # its precedence tier (precedence.yaml)

    def may_fire(self, present: frozenset[str]) -> bool:
        """False when the record lacks what ``when`` needs, so ``check`` would return None anyway: the
        engine then skips it, which makes a large catalogue cost what its relevant rules cost."""
        for clause in self.needs:  # noqa: SIM110  # a plain loop: this runs per rule per request
            if clause.isdisjoint(present):
                return False
        return True

    @property
    def max_indicator(self) -> str:
        """The highest indicator this rule can reach."""
        return max(
            [self.indicator, *(e.indicator for e in self.escalations)], key=lambda i: INDICATOR_ORDER[i]
        )

    def summary_at(self, ctx: EvalContext, level: str | None) -> str | None:
        """The summary of an escalation that applies at ``level`` (None: the card's own summary)."""
        for escalation in self.escalations:
            if escalation.indicator == level and escalation.summary and escalation.when(ctx) is not None:
                return escalation.summary
        return None


@dataclass(frozen=True, eq=False)
class RuleSet:
    """A validated, compiled catalogue. Immutable: a reload builds a new one and swaps it whole."""

    rules: tuple[CompiledRule, ...]
    by_id: dict[str, CompiledRule]
    valuesets: dict[str, ValueSet]
    terminology: Terminology
    back_pain: ValueSet  # the gate: no rule acts without low back pain in the record (B4)
    builder: RecordBuilder
    version: str
    file_hashes: dict[str, str]  # by the path inside the catalogue (no server paths: /readyz shows them)
    prefetch: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: tuple[Diagnostic, ...] = ()  # problems that do not stop loading (e.g. unused value sets)
    icd_refs: tuple[tuple[str, Diagnostic], ...] = ()  # ICD-10-CM codes and spans, where written

    @cached_property
    def red_flag_ids(self) -> tuple[tuple[str, str], ...]:
        """The red-flag rules, each with the highest indicator it can reach."""
        return tuple((rule.id, rule.max_indicator) for rule in self.rules if rule.category == "red-flag")

    @cached_property
    def recognised(self) -> frozenset[str]:
        """The value sets some red-flag rule reads: a fact in one of them has been judged by the red flags."""
        rules = [rule for rule in self.rules if rule.category == "red-flag"]
        return frozenset().union(*(rule.reads | rule.reads_medications for rule in rules))

    def types_read(self, rule_id: str) -> frozenset[str]:
        """The resource types a rule's facts come from (its value sets', medications', draft orders')."""
        key = ("types", rule_id)
        if key not in self.memo:
            rule = self.by_id[rule_id]
            kinds: set[str] = set()
            for name in rule.reads:
                kinds.update(self.valuesets[name].resources)
            if rule.reads_medications:
                kinds.update(MEDICATION_TYPES)
            if rule.reads_orders:
                kinds.add("ServiceRequest")
            self.memo[key] = frozenset(kinds)
        kinds_read: frozenset[str] = self.memo[key]
        return kinds_read

    def screening(self, hook: str) -> tuple[frozenset[str], int]:
        """The red-flag screening of ``hook``: the resource types its red-flag rules read (always the
        patient and the problems) and how many red-flag rules it runs; computed once per hook."""
        key = ("screening", hook)
        if key not in self.memo:
            rules = [rule for rule in self.rules_for(hook) if rule.category == "red-flag"]
            kinds = frozenset({"Patient", "Condition"}).union(*(self.types_read(rule.id) for rule in rules))
            self.memo[key] = (kinds, len(rules))
        screening: tuple[frozenset[str], int] = self.memo[key]
        return screening

    def unavailable_types(self, hook: str, keys: dict[str, str]) -> dict[str, str]:
        """Unavailable prefetch keys (key -> why) as the resource types they search (type -> why)."""
        templates = self.prefetch.get(hook, {})
        out: dict[str, str] = {}
        for key, why in keys.items():
            kind = _template_type(templates.get(key, key))
            out[kind] = f"{out[kind]}; {why}" if kind in out else why
        return out

    def patient_unreadable(self, hook: str, keys: Iterable[str]) -> bool:
        """Whether, without the prefetch ``keys``, nothing about the patient can be read: every key of
        ``hook`` that searches the patient or the problem list is among them."""
        missing = set(keys)
        basic = [
            key
            for key, template in self.prefetch.get(hook, {}).items()
            if _template_type(template) in ("Patient", "Condition")
        ]
        return bool(basic) and all(key in missing for key in basic)

    @cached_property
    def modifiers(self) -> tuple[tuple[str, Modifier], ...]:
        """The rules that modify other cards' orders when they fire, with their modifier."""
        return tuple((rule.id, rule.modifier) for rule in self.rules if rule.modifier is not None)

    @cached_property
    def ratings(self) -> tuple[tuple[str, ValueSet], ...]:
        """The rules that rate draft imaging orders (PAMA), with the orders they rate."""
        return tuple((rule.id, rule.pama_rating) for rule in self.rules if rule.pama_rating is not None)

    def rules_for(self, hook: str) -> tuple[CompiledRule, ...]:
        """The rules that serve ``hook``, in catalogue order."""
        return self.by_hook.get(hook, ())

    @cached_property
    def by_hook(self) -> dict[str, tuple[CompiledRule, ...]]:
        lists: dict[str, list[CompiledRule]] = {}
        for rule in self.rules:
            for hook in rule.hooks:
                lists.setdefault(hook, []).append(rule)
        return {hook: tuple(rules) for hook, rules in lists.items()}

    @cached_property
    def order(self) -> dict[str, int]:
        """Each rule's position in the catalogue (cards of equal urgency are shown in this order)."""
        return {rule.id: index for index, rule in enumerate(self.rules)}

    @cached_property
    def memo(self) -> dict[Any, Any]:
        """Structures the evaluator derives from this rule set once, on first use (the rule set is
        immutable, and a reload builds a new one)."""
        return {}


@dataclass(frozen=True)
class _Declared:
    """A ``suppresses`` entry where it is written: a rule file's own, or its tier's in precedence.yaml."""

    rule: str | None
    tier: str | None
    at: str | None
    document: SourceDocument
    where: DataPath


@dataclass
class _Shared:
    """What every rule file of one catalogue compiles against, and what compiling them collects."""

    valuesets: dict[str, ValueSet]
    terminology: Terminology
    definitions: dict[str, schema.Definition]
    queries: dict[str, Check] = field(default_factory=dict)  # record queries by text (``conditions``)
    declared: dict[str, list[_Declared]] = field(default_factory=dict)  # each rule's suppresses entries
    used_definitions: set[str] = field(default_factory=set)


def _compile_rule(loader: Loader, path: Path, shared: _Shared) -> CompiledRule | None:
    valuesets, terminology = shared.valuesets, shared.terminology
    document = loader.read(path)
    parsed: schema.RuleFile | None = loader.validate(schema.RuleFile, document)
    if parsed is None or document is None:
        if document is not None:
            _check_sections(loader, document, shared)
        return None
    doc = document
    if parsed.id != path.stem:
        loader.diagnostics.append(
            doc.diagnostic(("id",), f"rule id {parsed.id!r} differs from the file name {path.stem!r}")
        )

    report = _reporter(loader, doc)
    for name in parsed.define:
        if name in shared.definitions:
            shown = f"{DEFINITIONS_FILE} (use that one, or give this one another name)"
            loader.diagnostics.append(
                doc.diagnostic(("define", name), f"{name!r} is already defined in {shown}")
            )
    definitions = {**shared.definitions, **parsed.define}
    check_definitions(
        definitions, set(parsed.define), CompileEnv(valuesets, terminology, report, definitions=definitions)
    )
    env = CompileEnv(valuesets, terminology, report, shared=shared.queries, definitions=definitions)
    check = compile_condition(parsed.when, ("when",), env)
    escalations = tuple(
        CompiledEscalation(e.indicator, compile_condition(e.when, ("escalate", i, "when"), env), e.summary)
        for i, e in enumerate(parsed.escalate)
    )
    card = loader.card(parsed, doc, env) if parsed.card else None
    reassurance = compile_reassurance(parsed, card, env) if card is not None else None
    rating = env.valueset(parsed.pama_rating, ("pama_rating",)) if parsed.pama_rating else None
    if parsed.pama_rating:
        env.reads_orders.add(parsed.pama_rating)
    if parsed.category == "red-flag":
        reach = max(
            [parsed.indicator, *(e.indicator for e in parsed.escalate)], key=lambda i: INDICATOR_ORDER[i]
        )
        for where, minimum in env.uses_red_flags:
            if INDICATOR_ORDER[minimum] <= INDICATOR_ORDER[reach]:
                report(
                    where,
                    f"this red-flag rule can reach {reach}, so red_flags at {minimum} would depend on itself",
                    None,
                )
    defaults = parsed.test_defaults or schema.TestDefaults()
    loader.check_test_codes(defaults, doc, ("test_defaults",), terminology)
    tests = []
    for index, case in enumerate(parsed.tests):
        loader.check_test_codes(case, doc, ("tests", index), terminology)
        if case.now is None and defaults.now is None:
            report(("tests", index), "a test case needs 'now' (or the file's test_defaults: now)", None)
        tests.append(
            case.model_copy(
                update={
                    "now": case.now or defaults.now,
                    "patient": case.patient or defaults.patient,
                    "records": [*(defaults.records if case.background else ()), *case.records],
                }
            )
        )
    if {case.expect.fired for case in parsed.tests} != {True, False}:
        report(("tests",), "a rule needs at least one test that fires and one that stays silent", None)
    for name in sorted(set(parsed.define) - env.used_definitions):
        loader.diagnostics.append(
            doc.diagnostic(
                ("define", name), f"definition {name!r} is not used", "use it (is: ...), or delete it"
            ).as_warning()
        )
    shared.used_definitions |= env.used_definitions
    shared.declared[parsed.id] = [
        _Declared(entry, None, None, doc, ("suppresses", index))
        if isinstance(entry, str)
        else _Declared(entry.rule, entry.tier, entry.at, doc, ("suppresses", index))
        for index, entry in enumerate(parsed.suppresses)
    ]
    return CompiledRule(
        parsed.id,
        parsed.title,
        parsed.category,
        parsed.indicator,
        frozenset(parsed.hooks),
        check,
        card,
        parsed.consolidate_into,
        (),  # resolved with the tiers once every rule is compiled (``_precedence``)
        tuple(tests),
        doc.path,
        doc,
        frozenset(env.reads),
        frozenset(env.reads_medications),
        frozenset(env.reads_orders),
        tuple(ref for ref, _ in env.rule_refs),
        parsed.references.knowledge_base,
        escalations,
        loader.modifier(parsed, doc, terminology),
        rating,
        env.descriptions,
        frozenset(env.used),
        env.needs[check],
        reassurance,
        parsed.tier,
    )


def _check_sections(loader: Loader, document: SourceDocument, shared: _Shared) -> None:
    """A rule file with schema errors still gets the names and codes of its valid sections checked, so one
    mistake does not hide the others (the schema errors themselves are already reported)."""
    data = document.data if isinstance(document.data, dict) else {}
    quiet = Loader(loader.directory)  # sections with schema errors: their errors are in the main report

    report = _reporter(loader, document)
    terminology = shared.terminology
    definitions = dict(shared.definitions)
    local = data.get("define")
    for name, item in local.items() if isinstance(local, dict) else ():
        try:
            definitions[name] = schema.Definition.model_validate(item)
        except ValidationError:
            continue
    env = CompileEnv(shared.valuesets, terminology, report, definitions=definitions)
    try:
        when = schema.Condition.model_validate(data.get("when"))
    except ValidationError:
        pass
    else:
        compile_condition(when, ("when",), env)
    card = data.get("card")
    items = card.get("suggestions") if isinstance(card, dict) else None
    for index, item in enumerate(items if isinstance(items, list) else []):
        try:
            suggestion = schema.SuggestionSpec.model_validate(item)
        except ValidationError:
            continue
        if suggestion.order:
            quiet.resolve(suggestion.order, document, ("card", "suggestions", index, "order"), terminology)
            loader.diagnostics.extend(quiet.diagnostics)
            quiet.diagnostics.clear()


def _cross_check(rules: dict[str, CompiledRule], diagnostics: list[Diagnostic], failed: set[str]) -> None:
    def report(rule: CompiledRule, where: DataPath, message: str, help: str | None = None) -> None:
        diagnostics.append(rule.document.diagnostic(where, message, help))

    for rule in rules.values():
        if rule.consolidate_into is not None:
            target = rules.get(rule.consolidate_into)
            if target is None and rule.consolidate_into in failed:
                pass  # that rule's own file failed, and is reported on its own
            elif target is None:
                report(
                    rule,
                    ("consolidate_into",),
                    f"unknown rule {rule.consolidate_into!r}",
                    did_you_mean(rule.consolidate_into, rules),
                )
            elif target.card is None:
                report(
                    rule,
                    ("consolidate_into",),
                    f"rule {target.id!r} has no card of its own to consolidate into",
                )
            elif INDICATOR_ORDER[target.indicator] < INDICATOR_ORDER[rule.indicator]:
                report(
                    rule, ("consolidate_into",), f"rule {target.id!r} has a lower indicator than this rule"
                )
        for ref in rule.rule_refs:
            if ref not in rules and ref not in failed:
                report(rule, ("when",), f"unknown rule {ref!r}", did_you_mean(ref, rules))
    _find_cycles(rules, "suppresses", lambda r: [t for t, _ in r.suppresses], diagnostics)
    _find_cycles(rules, "when", lambda r: r.rule_refs, diagnostics)


def _precedence(
    rules: dict[str, CompiledRule],
    tiers: dict[str, schema.Tier],
    tiers_document: SourceDocument | None,
    shared: _Shared,
    diagnostics: list[Diagnostic],
    failed: set[str],
) -> dict[str, CompiledRule]:
    """Each rule with its ``suppresses`` resolved: its own entries and its tier's, a tier standing for
    every rule that says ``tier: <name>`` (but the suppressing rule itself), each target once at the
    lowest level any entry gives. Every entry is checked where it is written."""
    members: dict[str, list[str]] = {}
    for rule in rules.values():
        if rule.tier is None:
            continue
        if rule.tier in tiers:
            members.setdefault(rule.tier, []).append(rule.id)
        else:
            help = did_you_mean(rule.tier, tiers)
            where = f" ({PRECEDENCE_FILE} has none)" if tiers_document is None else ""
            diagnostics.append(
                rule.document.diagnostic(("tier",), f"unknown tier {rule.tier!r}{where}", help)
            )
    out: dict[str, CompiledRule] = {}
    for rule in rules.values():
        entries = list(shared.declared.get(rule.id, ()))
        if rule.tier in tiers and tiers_document is not None:
            entries += [
                _Declared(e.rule, e.tier, e.at, tiers_document, ("tiers", rule.tier, "suppresses", index))
                for index, e in enumerate(tiers[rule.tier].suppresses)
            ]
        found: dict[str, str] = {}
        for entry in entries:
            problem = _suppression_problem(rule, entry, rules, tiers, failed)
            if problem is not None:
                message, help = problem
                diagnostics.append(entry.document.diagnostic(entry.where, message, help))
                continue
            if entry.rule is not None and entry.rule not in rules:
                continue  # that rule's own file failed, and is reported on its own
            at = entry.at or rule.indicator
            targets = (
                [entry.rule] if entry.rule else [t for t in members.get(entry.tier or "", ()) if t != rule.id]
            )
            for target in targets:
                unsafe = _unsafe(rule, rules[target], at, entry)
                if unsafe is not None:
                    diagnostics.append(entry.document.diagnostic(entry.where, unsafe))
                elif target not in found or INDICATOR_ORDER[at] < INDICATOR_ORDER[found[target]]:
                    found[target] = at
        out[rule.id] = replace(rule, suppresses=tuple(sorted(found.items())))
    return out


def _suppression_problem(
    rule: CompiledRule,
    entry: _Declared,
    rules: dict[str, CompiledRule],
    tiers: dict[str, Any],
    failed: set[str],
) -> tuple[str, str | None] | None:
    """Why an entry names nothing it can suppress (an unknown rule or tier, the rule itself)."""
    if entry.tier is not None:
        if entry.tier not in tiers:
            return f"unknown tier {entry.tier!r}", did_you_mean(entry.tier, tiers)
        return None
    if entry.rule not in rules:
        if entry.rule in failed:  # that rule's own file failed, and is reported on its own
            return None
        return f"unknown rule {entry.rule!r}", did_you_mean(entry.rule or "", rules)
    if entry.rule == rule.id:
        return "a rule cannot suppress itself", None
    return None


def _unsafe(rule: CompiledRule, target: CompiledRule, at: str, entry: _Declared) -> str | None:
    """Clinical safety: a red flag may only give way to a card at least as urgent."""
    level = max(INDICATOR_ORDER[rule.indicator], INDICATOR_ORDER[at])
    if target.category != "red-flag" or INDICATOR_ORDER[target.indicator] <= level:
        return None
    shown = next(name for name, rank in INDICATOR_ORDER.items() if rank == level)
    who = (
        f"{shown} rule" if entry.document is rule.document else f"{shown} rule {rule.id!r} (tier {rule.tier})"
    )
    return f"{who} cannot suppress the {target.indicator} red flag {target.id!r}"


def _find_cycles(rules: dict[str, CompiledRule], key: str, edges: Any, diagnostics: list[Diagnostic]) -> None:
    graph = {rule_id: set(edges(rule)) for rule_id, rule in rules.items()}
    for cycle in cycles(graph):
        shown = " -> ".join([*cycle, cycle[0]])
        diagnostics.append(rules[cycle[-1]].document.diagnostic((key,), f"cycle in '{key}': {shown}"))


def _unused_valuesets(loader: Loader, rules: dict[str, CompiledRule], defined: set[str]) -> None:
    used = {BACK_PAIN_VALUESET, CHRONIC_VALUESET}.union(*(rule.uses for rule in rules.values()))
    for name in sorted(defined - used):
        path = loader.directory / "valuesets" / f"{name}.yaml"
        loader.diagnostics.append(
            Diagnostic(
                loader.display(path),
                1,
                1,
                f"value set {name!r} is not used by any rule",
                severity="warning",
                help="use it in a rule, or delete the file",
            )
        )


def _reporter(loader: Loader, document: SourceDocument) -> Callable[[DataPath, str, str | None], None]:
    """Where compiling reports a problem: at the value of the path, in ``document``."""

    def report(where: DataPath, message: str, help: str | None) -> None:
        loader.diagnostics.append(document.diagnostic(where, message, help, at_value=True))

    return report


def _unused_shared(
    loader: Loader,
    rules: dict[str, CompiledRule],
    shared: _Shared,
    definitions: SourceDocument | None,
    tiers: SourceDocument | None,
) -> None:
    """Warnings for shared definitions no rule uses and tiers no rule belongs to or names."""
    unused: list[Diagnostic] = []
    if definitions is not None:
        for name in sorted(set(shared.definitions) - shared.used_definitions):
            unused.append(
                definitions.diagnostic(("define", name), f"definition {name!r} is not used by any rule")
            )
    if tiers is not None and isinstance(tiers.data, dict) and isinstance(tiers.data.get("tiers"), dict):
        named = {rule.tier for rule in rules.values()}
        for entries in shared.declared.values():
            named.update(entry.tier for entry in entries)
        for name in sorted(set(tiers.data["tiers"]) - named):
            unused.append(
                tiers.diagnostic(("tiers", name), f"tier {name!r} has no rules and no rule names it")
            )
    loader.diagnostics.extend(d.as_warning() for d in unused)


def load_ruleset(directory: Path) -> RuleSet:
    """Load and compile a whole catalogue.

    Args:
        directory: the catalogue folder (see the module docstring for its layout).

    Raises:
        RuleSetError: with every problem found in every file, each located at a line and column.
    """
    loader = Loader(directory)
    if not directory.is_dir():
        raise RuleSetError([Diagnostic(str(directory), 1, 1, "the rules directory does not exist")])
    terminology = loader.terminology()
    if terminology is None:
        raise RuleSetError(loader.diagnostics)
    valuesets = loader.valuesets(terminology)
    definitions, definitions_document = loader.entries(DEFINITIONS_FILE, "define", schema.Definition)
    if definitions_document is not None:
        env = CompileEnv(
            valuesets, terminology, _reporter(loader, definitions_document), definitions=definitions
        )
        check_definitions(definitions, set(definitions), env)
    tiers, tiers_document = loader.entries(PRECEDENCE_FILE, "tiers", schema.Tier)
    compiled: dict[str, CompiledRule] = {}
    files = [path for path in sorted(directory.glob("*.yaml")) if path.name not in NOT_RULES]
    failed: set[str] = set()
    shared = _Shared(valuesets, terminology, definitions)
    for path in files:
        try:
            rule = _compile_rule(loader, path, shared)
        except Exception as exc:  # noqa: BLE001  # a loader bug: a located error, never a dead watcher
            problem = f"this file could not be loaded ({type(exc).__name__}: {exc}); please report it"
            loader.diagnostics.append(Diagnostic(loader.display(path), 1, 1, problem))
            rule = None
        if rule is None:
            failed.add(path.stem)
            continue
        if rule.id in compiled:
            loader.diagnostics.append(rule.document.diagnostic(("id",), f"duplicate rule id {rule.id!r}"))
            continue
        compiled[rule.id] = rule
    back_pain = valuesets.get(BACK_PAIN_VALUESET)
    if back_pain is None:
        loader.diagnostics.append(
            Diagnostic(
                loader.display(directory / "valuesets"),
                1,
                1,
                f"missing value set {BACK_PAIN_VALUESET!r}, which gates every rule",
            )
        )
    compiled = _precedence(compiled, tiers, tiers_document, shared, loader.diagnostics, failed)
    _cross_check(compiled, loader.diagnostics, failed)
    if not files:
        loader.diagnostics.append(Diagnostic(loader.display(directory), 1, 1, "no rule files found"))
    if not any(d.severity == "error" for d in loader.diagnostics):  # only meaningful when every rule loaded
        _unused_valuesets(loader, compiled, set(valuesets))
        _unused_shared(loader, compiled, shared, definitions_document, tiers_document)
    if any(d.severity == "error" for d in loader.diagnostics):
        raise RuleSetError(loader.diagnostics)
    assert back_pain is not None
    ordered = sorted(compiled.values(), key=lambda r: (-INDICATOR_ORDER[r.max_indicator], r.id))
    digest = hashlib.sha256(
        # by the paths inside the catalogue: replicas started from other folders report the same version
        "".join(f"{k}:{v}\n" for k, v in sorted(loader.by_name.items())).encode()
    ).hexdigest()
    builder = RecordBuilder(
        _relevant_codes(ordered, valuesets, back_pain),
        ValueSetIndex.build(valuesets, frozenset().union(*(rule.reads_medications for rule in ordered))),
        valuesets.get(CHRONIC_VALUESET),
    )
    ruleset = RuleSet(
        tuple(ordered),
        {r.id: r for r in ordered},
        valuesets,
        terminology,
        back_pain,
        builder,
        digest[:16],
        dict(sorted(loader.by_name.items())),
        warnings=tuple(sorted(d for d in loader.diagnostics if d.severity == "warning")),
        icd_refs=tuple(loader.icd_refs),
    )
    ruleset.prefetch.update(prefetch_templates(ruleset))
    return ruleset


def _relevant_codes(
    rules: list[CompiledRule], valuesets: dict[str, ValueSet], back_pain: ValueSet
) -> frozenset[CodeKey]:
    keys: set[CodeKey] = set(back_pain.keys)
    for rule in rules:
        for name in rule.reads | rule.reads_medications | rule.reads_orders:
            keys |= valuesets[name].keys
        if rule.card is not None:
            keys.update(s.order.code for s in rule.card.suggestions if s.order is not None)
        if rule.modifier is not None:
            keys.update(o.code for targets in rule.modifier.replace.values() for o in targets.values())
        if rule.reassurance is not None and rule.reassurance.unrecognised is not None:
            keys |= rule.reassurance.unrecognised.keys
    return frozenset(keys)


def _template_type(template: str) -> str:
    """The resource type a prefetch template reads ("Observation?patient=…", "Patient/{{…}}")."""
    return template.split("?", 1)[0].split("/", 1)[0]
