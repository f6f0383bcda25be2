"""Reading and compiling the catalogue's files; every problem becomes a located diagnostic."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from cds_hooks.response import Link, Source
from rules.engine.codes.terminology import (
    ICD10CM,
    LOINC,
    SNOMED,
    CodeKey,
    Terminology,
    ValueSet,
    icd_span,
    loinc_ok,
    normal_key,
    verhoeff_ok,
)
from rules.engine.compiler.conditions import compile_condition
from rules.engine.compiler.context import INDICATOR_ORDER, Check, CompileEnv, DataPath, parse_duration
from rules.engine.evaluation.cards import (
    PRIORITY_RANK,
    CardTemplate,
    OrderTemplate,
    SuggestionTemplate,
    build_service_request,
    card_links,
)
from rules.engine.evaluation.suggestions import Modifier
from rules.engine.model import schema
from rules.engine.model.diagnostics import Diagnostic, did_you_mean
from rules.engine.model.source import SourceDocument, read_yaml

PRIORITIES = ("stat", "asap", "urgent", "routine")
# Never a similar-looking code as a hint: it would name a different clinical concept.
_CODE_HELP = "verify the code (knowledge base Part D) and add it to terminology.yaml, or use a listed one"


@dataclass(frozen=True)
class CompiledEscalation:
    indicator: str
    when: Check
    summary: str | None


class Loader:
    """Collects diagnostics while reading one catalogue folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.diagnostics: list[Diagnostic] = []
        self.hashes: dict[str, str] = {}  # by the path diagnostics show (relative to the working directory)
        self.by_name: dict[str, str] = {}  # by the path inside the catalogue: the rule-set version hashes it
        self._orders: dict[tuple[CodeKey, str], OrderTemplate] = {}
        # Every ICD-10-CM code and span written in the catalogue, where it is written: ``lumbar check``
        # verifies them against the official code set (too large to load on every start).
        self.icd_refs: list[tuple[str, Diagnostic]] = []

    def display(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def read(self, path: Path) -> SourceDocument | None:
        display = self.display(path)
        try:
            content = path.read_bytes()
        except OSError as exc:
            self.diagnostics.append(Diagnostic(display, 1, 1, f"cannot read file: {exc}"))
            return None
        digest = hashlib.sha256(content).hexdigest()
        self.hashes[display] = digest
        try:
            self.by_name[path.relative_to(self.directory).as_posix()] = digest
        except ValueError:
            self.by_name[path.name] = digest
        document, problems = read_yaml(path, display, content)
        self.diagnostics.extend(problems)
        return document

    def validate(self, model: type[Any], document: SourceDocument | None) -> Any | None:
        if document is None:
            return None
        try:
            return model.model_validate(document.data)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                self.diagnostics.append(schema_diagnostic(document, error))
            return None

    def resolve(
        self, ref: str, document: SourceDocument, where: DataPath, terminology: Terminology
    ) -> CodeKey | None:
        key, problem = terminology.resolve(ref)
        if key is None:
            self.diagnostics.append(
                document.diagnostic(
                    where,
                    problem or "unknown code",
                    _CODE_HELP if problem and "terminology list" in problem else None,
                    at_value=True,
                )
            )
        return key

    def check_digit(
        self, system: str, code: str, document: SourceDocument, where: DataPath, *, verified: bool = False
    ) -> None:
        """SNOMED CT identifiers and LOINC codes carry a check digit: a mistyped code fails it (an error).
        In the verified core (``verified``, transcribed from knowledge base Part D) a failure is a warning
        for the knowledge base's owner: the code cannot be a valid identifier, so no record will carry
        it. ICD-10-CM codes are remembered for ``lumbar check``'s look-up in the official code set."""
        problem = digit_problem(system, code)
        if system == ICD10CM:
            self.icd_refs.append((code, document.diagnostic(where, code, at_value=False)))
        if problem is not None and verified:
            problem += "; it is in the verified core (knowledge base Part D): confirm it with its owner"
            self.diagnostics.append(document.diagnostic(where, problem).as_warning())
        elif problem is not None:
            self.diagnostics.append(document.diagnostic(where, problem))

    def order(self, key: CodeKey, priority: str, terminology: Terminology) -> OrderTemplate:
        """The validated ServiceRequest template for an order at a priority, built once per catalogue."""
        found = self._orders.get((key, priority))
        if found is None:
            display = terminology.display(key)
            found = OrderTemplate(key, display, priority, build_service_request(key, display, priority))
            self._orders[(key, priority)] = found
        return found

    # ---- terminology and value sets -----------------------------------------------------------------

    def terminology(self) -> Terminology | None:
        path = self.directory / "terminology.yaml"
        if not path.is_file():
            self.diagnostics.append(Diagnostic(self.display(path), 1, 1, "missing terminology.yaml"))
            return None
        document = self.read(path)
        parsed = self.validate(schema.TerminologyFile, document)
        if parsed is None or document is None:
            return None
        displays: dict[CodeKey, str] = {}
        for alias, codes in parsed.codes.items():
            system = parsed.systems.get(alias)
            if system is None:
                self.diagnostics.append(
                    document.diagnostic(
                        ("codes", alias),
                        f"unknown code system {alias!r}",
                        did_you_mean(alias, parsed.systems),
                    )
                )
                continue
            for code, display in codes.items():
                self.check_digit(system, code, document, ("codes", alias, code), verified=True)
                displays[(system, code)] = display
        terminology = Terminology(dict(parsed.systems), displays)
        for index, group in enumerate(parsed.same_test):
            keys = [
                self.resolve(ref, document, ("same_test", index, i), terminology)
                for i, ref in enumerate(group)
            ]
            members = frozenset(k for k in keys if k is not None)
            for key in members:
                terminology.equivalents[key] = members
        return terminology

    def entries(self, name: str, key: str, model: type[Any]) -> tuple[dict[str, Any], SourceDocument | None]:
        """The named entries under ``key`` of a catalogue-wide file that may be absent
        (``definitions.yaml``, ``precedence.yaml``), each validated with ``model`` on its own (so one
        bad entry does not hide the good ones from the rules that use them), and the file's document."""
        path = self.directory / name
        if not path.is_file():
            return {}, None
        document = self.read(path)
        if document is None:
            return {}, None
        data = document.data if isinstance(document.data, dict) else {}
        unknown = [k for k in data if k != key] if isinstance(document.data, dict) else []
        for other in unknown:
            self.diagnostics.append(
                document.diagnostic((other,), f"unknown key {other!r}", did_you_mean(other, [key]))
            )
        items = data.get(key)
        if not isinstance(items, dict) or not items:
            self.diagnostics.append(
                document.diagnostic((key,), f"{name} needs a mapping '{key}' of named entries")
            )
            return {}, document
        found: dict[str, Any] = {}
        for entry, value in items.items():
            if not re.match(schema.NAME_PATTERN, str(entry)) or len(str(entry)) > 80:
                self.diagnostics.append(
                    document.diagnostic(
                        (key, entry), f"{entry!r} is not a name (lower-case words joined by -)"
                    )
                )
                continue
            try:
                found[entry] = model.model_validate(value)
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    error = {**error, "loc": (key, entry, *error["loc"])}
                    self.diagnostics.append(schema_diagnostic(document, error))
        return found, document

    def valuesets(self, terminology: Terminology) -> dict[str, ValueSet]:
        found: dict[str, ValueSet] = {}
        for path in sorted((self.directory / "valuesets").glob("*.yaml")):
            document = self.read(path)
            parsed = self.validate(schema.ValueSetFile, document)
            if parsed is None or document is None:
                continue
            if parsed.valueset != path.stem:
                self.diagnostics.append(
                    document.diagnostic(
                        ("valueset",),
                        f"value set name {parsed.valueset!r} differs from the file name {path.stem!r}",
                    )
                )
            found[parsed.valueset] = self._valueset(parsed, document, terminology)
        return found

    def _valueset(
        self, parsed: schema.ValueSetFile, document: SourceDocument, terminology: Terminology
    ) -> ValueSet:
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
        for index, entry in enumerate(parsed.icd10cm):
            where = ("icd10cm", index)
            self.icd_refs.append((entry, document.diagnostic(where, entry)))
            first, last = icd_span(entry)
            if len(first) != len(last) or first > last:
                self.diagnostics.append(
                    document.diagnostic(
                        where, f"ICD-10-CM range {entry!r}: ends of unequal length or reversed"
                    )
                )
        for index, group in enumerate(parsed.widened):
            for alias, listed in group.codes.items():
                system = terminology.systems.get(alias)
                if system is None:
                    self.diagnostics.append(
                        document.diagnostic(
                            ("widened", index, "codes", alias),
                            f"unknown code system {alias!r}",
                            did_you_mean(alias, terminology.systems),
                        )
                    )
                    continue
                for code in listed:
                    self.check_digit(system, code, document, ("widened", index, "codes", alias, code))
                    codes.add(normal_key(system, code))
        for index, name in enumerate(parsed.expansions):
            path = self.directory / "valuesets" / name
            codes |= self.expansion(path, document, ("expansions", index), terminology)
        return ValueSet(
            parsed.valueset,
            parsed.title,
            frozenset(codes),
            {k: frozenset(v) for k, v in sited.items()},
            self.pattern(parsed.text, document, "text"),
            frozenset(parsed.resources),
            tuple(icd_span(entry) for entry in parsed.icd10cm),
            self.pattern(parsed.negation, document, "negation"),
            frozenset(parsed.text_in if parsed.text_in is not None else parsed.resources),
        )

    def expansion(
        self, path: Path, document: SourceDocument, where: DataPath, terminology: Terminology
    ) -> set[CodeKey]:
        """The codes of a FHIR ValueSet file (``compose.include`` concepts or ``expansion.contains``), read
        as JSON: a list of thousands of codes costs milliseconds, where YAML would cost seconds."""
        try:
            content = path.read_bytes()
            data = orjson.loads(content)
        except (OSError, orjson.JSONDecodeError) as exc:
            self.diagnostics.append(document.diagnostic(where, f"cannot read expansion {path.name}: {exc}"))
            return set()
        shown = self.display(path)
        self.hashes[shown] = hashlib.sha256(content).hexdigest()
        self.by_name[f"valuesets/{path.name}"] = self.hashes[shown]
        entries = _value_set_codes(data)
        if entries is None:
            problem = f"{path.name}: not a FHIR ValueSet with compose.include concepts or expansion.contains"
            self.diagnostics.append(document.diagnostic(where, problem))
            return set()
        known = set(terminology.systems.values())
        out: set[CodeKey] = set()
        for index, (system, code) in enumerate(entries):
            wrong: str | None
            if not isinstance(system, str) or not isinstance(code, str) or system not in known:
                wrong = f"code {index + 1} of the file: needs a code and one of the known systems"
            else:
                wrong = digit_problem(system, code)
                out.add(normal_key(system, code))
            if wrong is not None or system == ICD10CM:  # located by a search of the text, only then
                line = content[: content.find(f'"{code}"'.encode()) + 1].count(b"\n") + 1 if code else 1
                if wrong is not None:
                    self.diagnostics.append(Diagnostic(shown, line, 1, wrong))
                else:
                    self.icd_refs.append((str(code), Diagnostic(shown, line, 1, str(code))))
        return out

    def pattern(self, texts: list[str], document: SourceDocument, key: str) -> re.Pattern[str] | None:
        if not texts:
            return None
        try:
            return re.compile("|".join(f"(?:{p})" for p in texts), re.IGNORECASE)
        except re.error as exc:
            self.diagnostics.append(document.diagnostic((key,), f"invalid regular expression: {exc}"))
            return None

    # ---- rule parts ---------------------------------------------------------------------------------

    def card(self, parsed: schema.RuleFile, document: SourceDocument, env: CompileEnv) -> CardTemplate:
        spec = parsed.card
        assert spec is not None
        terminology = env.terminology
        reason = None
        if spec.reason:
            key = self.resolve(spec.reason, document, ("card", "reason"), terminology)
            reason = (key, terminology.display(key)) if key else None
        suggestions = []
        codes: list[CodeKey] = []
        for index, item in enumerate(spec.suggestions):
            where: DataPath = ("card", "suggestions", index)
            only_if = compile_condition(item.only_if, (*where, "only_if"), env) if item.only_if else None
            make = partial(
                SuggestionTemplate,
                item.label,
                item.recommended,
                parse_duration(item.window),
                only_if=only_if,
                min_indicator=item.min_indicator,
            )
            if item.remove_draft is not None:
                vs = env.valueset(item.remove_draft, (*where, "remove_draft"))
                env.reads_orders.add(item.remove_draft)
                if vs is not None:
                    suggestions.append(make(remove_draft=vs))
                continue
            assert item.order is not None
            key = self.resolve(item.order, document, (*where, "order"), terminology)
            if key is None:
                continue
            codes.append(key)
            try:
                order_at = tuple(
                    (level, self.order(key, priority, terminology))
                    for level, priority in sorted(
                        item.priority_at.items(), key=lambda entry: -INDICATOR_ORDER[entry[0]]
                    )
                )
                suggestions.append(make(order=self.order(key, item.priority, terminology), order_at=order_at))
            except ValueError as exc:
                self.diagnostics.append(document.diagnostic(where, str(exc)))
        if len(codes) != len(set(codes)) and not any(s.only_if or s.min_indicator for s in suggestions):
            self.diagnostics.append(
                document.diagnostic(("card", "suggestions"), "the same order is suggested twice")
            )
        for where, problem in urgency_problems(parsed, terminology):
            self.diagnostics.append(document.diagnostic(where, problem))
        notes = tuple(
            (compile_condition(n.when, ("card", "notes", i, "when"), env), n.text)
            for i, n in enumerate(spec.notes)
        )
        source = Source(label=spec.source.label, url=spec.source.url)
        return CardTemplate(
            parsed.id,
            parsed.category,
            parsed.title,
            spec.summary,
            spec.detail,
            source,
            card_links(
                source, tuple(Link(label=link.label, url=link.url, type="absolute") for link in spec.links)
            ),
            reason,
            tuple(suggestions),
            spec.selection,
            notes,
        )

    def modifier(
        self, parsed: schema.RuleFile, document: SourceDocument, terminology: Terminology
    ) -> Modifier | None:
        spec = parsed.modifies
        if spec is None:
            return None
        replace: dict[CodeKey, dict[str, OrderTemplate]] = {}
        for source_ref, target_ref in spec.replace.items():
            source = self.resolve(source_ref, document, ("modifies", "replace", source_ref), terminology)
            target = self.resolve(target_ref, document, ("modifies", "replace", source_ref), terminology)
            if source is not None and target is not None:
                replace[source] = {p: self.order(target, p, terminology) for p in PRIORITIES}
        return Modifier(spec.reason, spec.note.strip(), replace)

    def check_test_codes(
        self,
        case: schema.TestCase | schema.TestDefaults,
        document: SourceDocument,
        where: DataPath,
        terminology: Terminology,
    ) -> None:
        """Test records may use any code (to prove a wrong one stays silent) but only known systems."""
        for group in ("records", "draft_orders"):
            for index, record in enumerate(getattr(case, group, ())):
                kind = record.kind()
                refs = [kind[1]] if kind else []
                refs += list(record.body_site) + list(record.interpretation)
                if isinstance(record.value, str):
                    refs.append(record.value)
                for ref in refs:
                    if terminology.split(ref)[0] is None:
                        self.diagnostics.append(
                            document.diagnostic(
                                (*where, group, index),
                                f"unknown code system in {ref!r}",
                                did_you_mean(ref.partition(":")[0], terminology.systems),
                            )
                        )


def _value_set_codes(data: Any) -> list[tuple[Any, Any]] | None:
    """(system, code) of every code a FHIR ValueSet lists: ``compose.include[].concept[]`` (the system per
    include) and ``expansion.contains[]``; None when ``data`` is not a ValueSet that lists codes."""
    if not isinstance(data, dict) or data.get("resourceType") != "ValueSet":
        return None
    compose, expansion = data.get("compose") or {}, data.get("expansion") or {}
    includes = compose.get("include") if isinstance(compose, dict) else None
    contains = expansion.get("contains") if isinstance(expansion, dict) else None
    if not isinstance(includes, list) and not isinstance(contains, list):
        return None
    out: list[tuple[Any, Any]] = []
    for include in includes if isinstance(includes, list) else []:
        include = include if isinstance(include, dict) else {}
        concepts = include.get("concept")
        for concept in concepts if isinstance(concepts, list) else [None]:
            code = concept.get("code") if isinstance(concept, dict) else None
            out.append((include.get("system"), code))
    for item in contains if isinstance(contains, list) else []:
        out.append((item.get("system"), item.get("code")) if isinstance(item, dict) else (None, None))
    return out


def digit_problem(system: str, code: str) -> str | None:
    """Why a SNOMED CT identifier or LOINC code fails its check digit (None when it passes, or has none)."""
    if system == SNOMED and not verhoeff_ok(code):
        return f"SNOMED CT identifier {code!r} fails its Verhoeff check digit (a typo?)"
    if system == LOINC and not loinc_ok(code):
        return f"LOINC code {code!r} fails its check digit (a typo?)"
    return None


def schema_diagnostic(document: SourceDocument, error: Any) -> Diagnostic:
    """A pydantic error as a located, readable diagnostic."""
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
    elif kind == "literal_error":
        given = error.get("input")
        expected = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        message = f"{name}: {given!r} is not one of {', '.join(expected)}"
        help = did_you_mean(str(given), expected) if isinstance(given, str) else None
    elif kind == "string_too_long" and name == "summary":
        length = len(error.get("input") or "")
        message = (
            f"summary: {length} characters; CDS Hooks 2.0 wants fewer than 140 (move the rest to detail)"
        )
    else:
        given = error.get("input")
        short = isinstance(given, str | int | float | bool) and len(repr(given)) < 80
        shown = f" (got {given!r})" if short else ""
        message = f"{name}: {message[0].lower()}{message[1:]}{shown}"
    return document.diagnostic(clean, message, help, at_value=at_value)


_MODEL_NAMES = frozenset(
    name
    for name, value in vars(schema).items()
    if isinstance(value, type) and issubclass(value, schema.Strict)
)


def _is_type_tag(part: str) -> bool:
    """Whether a location part is a pydantic union-member tag rather than a key of the file."""
    if part in _MODEL_NAMES or part in ("str", "bool", "int", "float", "is-instance[str]"):
        return True
    return part.startswith(("constrained-", "function-", "list[", "tuple[", "dict[", "nullable["))


# What a card's summary promises about time, and the order priority it needs (FHIR request-priority):
# "now", "immediately", "within 4 hours" → an emergency referral at stat and every order stat or asap;
# "same day", "today", "within 24 hours" → every order stat or asap.
_NOW = re.compile(
    r"\b(emergency department|emergency|acute oncology|oncology) now\b|\bimmediately\b|within 4 hours", re.I
)
_SAME_DAY = re.compile(r"\bsame[- ]day\b|\btoday\b|within 24 hours", re.I)
EMERGENCY_REFERRAL: CodeKey = (
    "http://snomed.info/sct",
    "306254002",
)  # Referral to Accident and Emergency doctor


def urgency_problems(parsed: schema.RuleFile, terminology: Terminology) -> list[tuple[DataPath, str]]:
    """Summaries whose words are more urgent than the orders offered with them: at each level a summary
    applies (the card's own, each escalation's), the orders offered there must carry the priority the words
    promise (``lumbar check`` lint, issue 15)."""
    spec = parsed.card
    assert spec is not None
    levels = [(parsed.indicator, spec.summary, ("card", "summary"))] + [
        (e.indicator, e.summary or spec.summary, ("escalate", i, "summary"))
        for i, e in enumerate(parsed.escalate)
    ]
    emergency = terminology.canonical(EMERGENCY_REFERRAL)
    problems: list[tuple[DataPath, str]] = []
    for level, summary, where in levels:
        now, same_day = bool(_NOW.search(summary)), bool(_SAME_DAY.search(summary))
        if not (now or same_day):
            continue
        for index, item in enumerate(spec.suggestions):
            if item.order is None:
                continue
            if item.min_indicator and INDICATOR_ORDER[item.min_indicator] > INDICATOR_ORDER[level]:
                continue
            reached = [
                p for at, p in item.priority_at.items() if INDICATOR_ORDER[at] <= INDICATOR_ORDER[level]
            ]
            priority = max([item.priority, *reached], key=lambda p: PRIORITY_RANK[p])
            key, _ = terminology.resolve(item.order)
            is_emergency = key is not None and terminology.canonical(key) == emergency
            needed = ("stat",) if now and is_emergency else ("stat", "asap")
            if priority not in needed:
                words = "now" if now else "same day"
                problems.append(
                    (
                        ("card", "suggestions", index),
                        f"the {level} summary at {'.'.join(map(str, where))} says '{words}' but "
                        f"{item.label!r} is {priority} at {level}: use {' or '.join(needed)} "
                        f"(priority_at: {{{level}: {needed[0] if len(needed) == 1 else 'asap'}}})",
                    )
                )
    return problems
