"""Loading a rule catalogue: parse, validate, resolve, compile, cross-check; every error reported at once.

Catalogue layout (``LUMBAR_RULES_DIR``)::

    terminology.yaml        the codes rules and value sets may use
    valuesets/<name>.yaml   one value set per file, name = file stem
    <rule-id>.yaml          one rule per file, id = file stem

:func:`load_ruleset` returns a :class:`RuleSet` or raises :class:`RuleSetError` carrying every diagnostic.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cds_hooks.response import Link, Source
from rules.engine import schema
from rules.engine.cards import CardTemplate, SuggestionTemplate, build_service_request
from rules.engine.conditions import Check, CompileEnv, DataPath, compile_condition, parse_duration
from rules.engine.diagnostics import Diagnostic, RuleSetError, did_you_mean
from rules.engine.prefetch import prefetch_templates
from rules.engine.record import RecordBuilder
from rules.engine.source import SourceDocument, read_yaml
from rules.engine.terminology import CodeKey, Terminology, ValueSet

CONTEXT_VALUESET = "low-back-pain"
"""The value set that gates every rule (knowledge base Part B4) and defines the pain episode."""

_INDICATOR_RANK = {"info": 0, "warning": 1, "critical": 2}


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
    suppresses: tuple[str, ...]
    tests: tuple[schema.TestCase, ...]
    path: str
    document: SourceDocument
    reads: frozenset[str]
    reads_medications: frozenset[str]
    reads_orders: frozenset[str]
    rule_refs: tuple[str, ...]
    knowledge_base: str


@dataclass(frozen=True, eq=False)
class RuleSet:
    """A validated, compiled catalogue. Immutable: a reload builds a new one and swaps it whole."""

    rules: tuple[CompiledRule, ...]
    by_id: dict[str, CompiledRule]
    valuesets: dict[str, ValueSet]
    terminology: Terminology
    context: ValueSet
    builder: RecordBuilder
    version: str
    file_hashes: dict[str, str]
    prefetch: dict[str, dict[str, str]] = field(default_factory=dict)

    def rules_for(self, hook: str) -> list[CompiledRule]:
        return [rule for rule in self.rules if hook in rule.hooks]


class _Loader:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.diagnostics: list[Diagnostic] = []
        self.hashes: dict[str, str] = {}

    def display(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def read(self, path: Path) -> SourceDocument | None:
        self.hashes[self.display(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        document, problems = read_yaml(path, self.display(path))
        self.diagnostics.extend(problems)
        return document

    def validate(self, model: type[Any], document: SourceDocument) -> Any | None:
        try:
            return model.model_validate(document.data)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                self.diagnostics.append(_schema_diagnostic(document, error))
            return None

    # ---- the three kinds of file -------------------------------------------------------------------

    def terminology(self) -> Terminology | None:
        path = self.directory / "terminology.yaml"
        if not path.is_file():
            self.diagnostics.append(Diagnostic(self.display(path), 1, 1, "missing terminology.yaml"))
            return None
        document = self.read(path)
        parsed = self.validate(schema.TerminologyFile, document) if document else None
        if parsed is None:
            return None
        displays: dict[CodeKey, str] = {}
        for alias, codes in parsed.codes.items():
            system = parsed.systems.get(alias)
            if system is None:
                assert document is not None
                self.diagnostics.append(
                    document.diagnostic(
                        ("codes", alias),
                        f"unknown code system {alias!r}",
                        did_you_mean(alias, parsed.systems),
                    )
                )
                continue
            for code, display in codes.items():
                displays[(system, code)] = display
        return Terminology(dict(parsed.systems), displays)

    def valuesets(self, terminology: Terminology) -> dict[str, ValueSet]:
        found: dict[str, ValueSet] = {}
        for path in sorted((self.directory / "valuesets").glob("*.yaml")):
            document = self.read(path)
            parsed = self.validate(schema.ValueSetFile, document) if document else None
            if parsed is None or document is None:
                continue
            if parsed.valueset != path.stem:
                self.diagnostics.append(
                    document.diagnostic(
                        ("valueset",),
                        f"value set name {parsed.valueset!r} differs from the file name {path.stem!r}",
                    )
                )
            vs = self._valueset(parsed, document, terminology)
            if vs is not None:
                found[parsed.valueset] = vs
        return found

    def _valueset(
        self, parsed: schema.ValueSetFile, document: SourceDocument, terminology: Terminology
    ) -> ValueSet | None:
        codes: set[CodeKey] = set()
        sited: dict[CodeKey, set[CodeKey]] = {}
        for index, entry in enumerate(parsed.codes):
            ref, site = (entry, None) if isinstance(entry, str) else (entry.code, entry.body_site)
            where: DataPath = ("codes", index) if isinstance(entry, str) else ("codes", index, "code")
            key = self.resolve(ref, document, where, terminology)
            site_key = (
                self.resolve(site, document, ("codes", index, "body_site"), terminology) if site else None
            )
            if key is None:
                continue
            if site is None:
                codes.add(key)
            elif site_key is not None:
                sited.setdefault(key, set()).add(site_key)
        pattern = None
        if parsed.text:
            try:
                pattern = re.compile("|".join(f"(?:{p})" for p in parsed.text), re.IGNORECASE)
            except re.error as exc:
                self.diagnostics.append(document.diagnostic(("text",), f"invalid regular expression: {exc}"))
        return ValueSet(
            parsed.valueset,
            parsed.title,
            frozenset(codes),
            {k: frozenset(v) for k, v in sited.items()},
            pattern,
        )

    def resolve(
        self, ref: str, document: SourceDocument, where: DataPath, terminology: Terminology
    ) -> CodeKey | None:
        key, problem = terminology.resolve(ref)
        if key is None:
            self.diagnostics.append(
                document.diagnostic(
                    where, problem or "unknown code", did_you_mean(ref, terminology.codes_of(ref))
                )
            )
        return key

    def rule(
        self, path: Path, valuesets: dict[str, ValueSet], terminology: Terminology
    ) -> CompiledRule | None:
        document = self.read(path)
        parsed: schema.RuleFile | None = self.validate(schema.RuleFile, document) if document else None
        if parsed is None or document is None:
            return None
        if parsed.id != path.stem:
            self.diagnostics.append(
                document.diagnostic(
                    ("id",), f"rule id {parsed.id!r} differs from the file name {path.stem!r}"
                )
            )

        def report(where: DataPath, message: str, help: str | None) -> None:
            self.diagnostics.append(document.diagnostic(where, message, help))

        env = CompileEnv(valuesets, terminology, report)
        check = compile_condition(parsed.when, ("when",), env)
        card = self.card(parsed, document, terminology) if parsed.card else None
        for index, case in enumerate(parsed.tests):
            self._check_test(case, document, ("tests", index), terminology)
        directions = {case.expect.fired for case in parsed.tests}
        if directions != {True, False}:
            report(("tests",), "a rule needs at least one test that fires and one that stays silent", None)
        return CompiledRule(
            parsed.id,
            parsed.title,
            parsed.category,
            parsed.indicator,
            frozenset(parsed.hooks),
            check,
            card,
            parsed.consolidate_into,
            tuple(parsed.suppresses),
            tuple(parsed.tests),
            document.path,
            document,
            frozenset(env.reads),
            frozenset(env.reads_medications),
            frozenset(env.reads_orders),
            tuple(ref for ref, _ in env.rule_refs),
            parsed.references.knowledge_base,
        )

    def card(
        self, parsed: schema.RuleFile, document: SourceDocument, terminology: Terminology
    ) -> CardTemplate | None:
        spec = parsed.card
        assert spec is not None
        reason = None
        if spec.reason:
            key = self.resolve(spec.reason, document, ("card", "reason"), terminology)
            reason = (key, terminology.display(key)) if key else None
        suggestions = []
        for index, item in enumerate(spec.suggestions):
            key = self.resolve(item.order, document, ("card", "suggestions", index, "order"), terminology)
            if key is None:
                continue
            display = terminology.display(key)
            try:
                resource = build_service_request(key, display, item.priority)
            except ValueError as exc:
                self.diagnostics.append(document.diagnostic(("card", "suggestions", index), str(exc)))
                continue
            suggestions.append(
                SuggestionTemplate(
                    item.label,
                    key,
                    display,
                    item.priority,
                    item.recommended,
                    parse_duration(item.window),
                    resource,
                )
            )
        codes = [s.code for s in suggestions]
        if len(codes) != len(set(codes)):
            self.diagnostics.append(
                document.diagnostic(("card", "suggestions"), "the same order is suggested twice")
            )
        return CardTemplate(
            parsed.id,
            parsed.title,
            parsed.indicator,
            spec.summary,
            spec.detail,
            Source(label=spec.source.label, url=spec.source.url),
            tuple(Link(label=link.label, url=link.url) for link in spec.links),
            reason,
            tuple(suggestions),
            spec.selection,
        )

    def _check_test(
        self, case: schema.TestCase, document: SourceDocument, where: DataPath, terminology: Terminology
    ) -> None:
        """Test records may use any code (to prove a wrong one stays silent) but only known systems."""
        for group in ("records", "draft_orders"):
            for index, record in enumerate(getattr(case, group)):
                kind = record.kind()
                refs = [kind[1]] if kind else []
                refs += list(record.body_site) + list(record.interpretation)
                if isinstance(record.value, str):
                    refs.append(record.value)
                for ref in refs:
                    if ref and terminology.split(ref)[0] is None:
                        self.diagnostics.append(
                            document.diagnostic(
                                (*where, group, index),
                                f"unknown code system in {ref!r}",
                                did_you_mean(ref.partition(":")[0], terminology.systems),
                            )
                        )


def _schema_diagnostic(document: SourceDocument, error: Any) -> Diagnostic:
    loc = tuple(error["loc"])
    kind = error["type"]
    message = str(error["msg"])
    help = None
    # pydantic adds union member names (e.g. 'str', 'ValueSetEntry') to locations; drop them.
    clean = tuple(part for part in loc if isinstance(part, int) or not _is_type_tag(part))
    name = next((str(part) for part in reversed(clean) if isinstance(part, str)), "value")
    at_value = True
    if kind == "extra_forbidden":
        message = f"unknown key {name!r}"
        help = did_you_mean(name, schema.ALL_KEYS)
        at_value = False
    elif kind == "missing":
        message = f"missing required key {name!r}"
        clean = clean[:-1]
        at_value = False
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
        at_value = False
    else:
        given = error.get("input")
        short = isinstance(given, str | int | float | bool) and len(repr(given)) < 80
        shown = f" (got {given!r})" if short else ""
        message = f"{name}: {message[0].lower()}{message[1:]}{shown}"
    return document.diagnostic(clean, message, help, at_value=at_value)


def _is_type_tag(part: str) -> bool:
    return (
        (part[:1].isupper() and part not in schema.ALL_KEYS)
        or part.startswith(("constrained-", "function-"))
        or part in ("str", "bool", "int", "float", "list[str]", "tuple[float, str]", "is-instance[str]")
    )


def _cross_check(rules: dict[str, CompiledRule], diagnostics: list[Diagnostic]) -> None:
    def report(rule: CompiledRule, where: DataPath, message: str, help: str | None = None) -> None:
        diagnostics.append(rule.document.diagnostic(where, message, help))

    for rule in rules.values():
        if rule.consolidate_into is not None:
            target = rules.get(rule.consolidate_into)
            if target is None:
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
            elif _INDICATOR_RANK[target.indicator] < _INDICATOR_RANK[rule.indicator]:
                report(
                    rule, ("consolidate_into",), f"rule {target.id!r} has a lower indicator than this rule"
                )
        for index, target_id in enumerate(rule.suppresses):
            target = rules.get(target_id)
            if target is None:
                report(
                    rule, ("suppresses", index), f"unknown rule {target_id!r}", did_you_mean(target_id, rules)
                )
            elif target_id == rule.id:
                report(rule, ("suppresses", index), "a rule cannot suppress itself")
            elif (
                target.category == "red-flag"
                and _INDICATOR_RANK[target.indicator] > _INDICATOR_RANK[rule.indicator]
            ):
                # Clinical safety: a red flag may only give way to a card at least as urgent.
                report(
                    rule,
                    ("suppresses", index),
                    f"{rule.indicator} rule cannot suppress the {target.indicator} red flag {target_id!r}",
                )
        for ref in rule.rule_refs:
            if ref not in rules:
                report(rule, ("when",), f"unknown rule {ref!r}", did_you_mean(ref, rules))
    _find_cycles(rules, "suppresses", lambda r: r.suppresses, diagnostics)
    _find_cycles(rules, "when", lambda r: r.rule_refs, diagnostics)


def _find_cycles(rules: dict[str, CompiledRule], key: str, edges: Any, diagnostics: list[Diagnostic]) -> None:
    state: dict[str, int] = {}

    def visit(rule_id: str, trail: list[str]) -> None:
        state[rule_id] = 1
        for nxt in edges(rules[rule_id]):
            if nxt not in rules:
                continue
            if state.get(nxt) == 1:
                cycle = (
                    " -> ".join([*trail[trail.index(nxt) :], nxt]) if nxt in trail else f"{rule_id} -> {nxt}"
                )
                diagnostics.append(rules[rule_id].document.diagnostic((key,), f"cycle in '{key}': {cycle}"))
            elif state.get(nxt) is None:
                visit(nxt, [*trail, nxt])
        state[rule_id] = 2

    for rule_id in rules:
        if state.get(rule_id) is None:
            visit(rule_id, [rule_id])


def load_ruleset(directory: Path) -> RuleSet:
    """Load and compile a whole catalogue.

    Args:
        directory: the catalogue folder (see the module docstring for its layout).

    Raises:
        RuleSetError: with every problem found in every file, each located at a line and column.
    """
    loader = _Loader(directory)
    if not directory.is_dir():
        raise RuleSetError([Diagnostic(str(directory), 1, 1, "the rules directory does not exist")])
    terminology = loader.terminology()
    if terminology is None:
        raise RuleSetError(loader.diagnostics)
    valuesets = loader.valuesets(terminology)
    compiled: dict[str, CompiledRule] = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "terminology.yaml":
            continue
        rule = loader.rule(path, valuesets, terminology)
        if rule is None:
            continue
        if rule.id in compiled:
            loader.diagnostics.append(rule.document.diagnostic(("id",), f"duplicate rule id {rule.id!r}"))
            continue
        compiled[rule.id] = rule
    context = valuesets.get(CONTEXT_VALUESET)
    if context is None:
        loader.diagnostics.append(
            Diagnostic(
                loader.display(directory / "valuesets"),
                1,
                1,
                f"missing value set {CONTEXT_VALUESET!r}, which gates every rule",
            )
        )
    _cross_check(compiled, loader.diagnostics)
    if not compiled:
        loader.diagnostics.append(Diagnostic(loader.display(directory), 1, 1, "no rule files found"))
    if any(d.severity == "error" for d in loader.diagnostics):
        raise RuleSetError(loader.diagnostics)
    assert context is not None
    ordered = sorted(compiled.values(), key=lambda r: (-_INDICATOR_RANK[r.indicator], r.id))
    digest = hashlib.sha256(
        "".join(f"{k}:{v}\n" for k, v in sorted(loader.hashes.items())).encode()
    ).hexdigest()
    relevant = _relevant_codes(ordered, valuesets, context)
    texts = [vs.text.pattern for vs in valuesets.values() if vs.text is not None]
    builder = RecordBuilder(relevant, re.compile("|".join(texts), re.IGNORECASE) if texts else None)
    ruleset = RuleSet(
        tuple(ordered),
        {r.id: r for r in ordered},
        valuesets,
        terminology,
        context,
        builder,
        digest[:16],
        dict(loader.hashes),
    )
    ruleset.prefetch.update(prefetch_templates(ruleset))
    return ruleset


def _relevant_codes(
    rules: list[CompiledRule], valuesets: dict[str, ValueSet], context: ValueSet
) -> frozenset[CodeKey]:
    keys: set[CodeKey] = set(context.keys)
    for rule in rules:
        for name in rule.reads | rule.reads_medications | rule.reads_orders:
            keys |= valuesets[name].keys
        if rule.card is not None:
            keys.update(s.code for s in rule.card.suggestions)
    return frozenset(keys)
