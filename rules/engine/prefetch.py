"""Prefetch templates derived from what the loaded rules read, so the EHR sends exactly what is needed.

One template per resource type, each asking only for the codes some rule of that hook reads: findings
(Observation, Condition), medications (MedicationStatement), and orders and results (ServiceRequest,
DiagnosticReport) for the codes the rules check or suggest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cds_hooks.prefetch import check_template
from rules.engine.schema import ALL_HOOKS
from rules.engine.terminology import CodeKey

if TYPE_CHECKING:
    from rules.engine.ruleset import CompiledRule, RuleSet

LOINC = "http://loinc.org"
_PATIENT = "{{context.patientId}}"


def _search(resource_type: str, codes: set[CodeKey]) -> str:
    tokens = ",".join(f"{system}|{code}" for system, code in sorted(codes))
    return f"{resource_type}?patient={_PATIENT}&code={tokens}"


def _closure(ruleset: RuleSet, hook: str) -> list[CompiledRule]:
    """The hook's rules, plus the rules they reference and the cards they consolidate into."""
    todo = [rule.id for rule in ruleset.rules_for(hook)]
    seen: dict[str, CompiledRule] = {}
    while todo:
        rule = ruleset.by_id[todo.pop()]
        if rule.id in seen:
            continue
        seen[rule.id] = rule
        todo.extend(rule.rule_refs)
        if rule.consolidate_into:
            todo.append(rule.consolidate_into)
    return list(seen.values())


def prefetch_templates(ruleset: RuleSet) -> dict[str, dict[str, str]]:
    """Per hook, the prefetch templates (key → FHIR query) its CDS service declares in discovery."""
    out: dict[str, dict[str, str]] = {}
    for hook in ALL_HOOKS:
        rules = _closure(ruleset, hook)
        if not rules:
            continue
        findings: dict[str, set[CodeKey]] = {"Observation": set(), "Condition": set(), "Procedure": set()}
        medications: set[CodeKey] = set()
        orders: set[CodeKey] = set()
        for vs in [ruleset.context, *(ruleset.valuesets[n] for rule in rules for n in rule.reads)]:
            for resource_type in vs.resources:
                findings[resource_type] |= {
                    k for k in vs.keys if resource_type == "Observation" or k[0] != LOINC
                }
        for rule in rules:
            for name in rule.reads_medications:
                medications |= ruleset.valuesets[name].keys
            for name in rule.reads_orders:
                orders |= ruleset.valuesets[name].keys
            if rule.card is not None:
                orders.update(s.order.code for s in rule.card.suggestions if s.order is not None)
            if rule.modifier is not None:
                orders.update(o.code for targets in rule.modifier.replace.values() for o in targets.values())
        results = {key for key in orders if key[0] == LOINC}
        # The problem list and the medication list are fetched whole: they are short, and a diagnosis coded
        # only in an unverified code system, or a medication by product, is matched by its text.
        templates = {
            "patient": f"Patient/{_PATIENT}",
            "conditions": f"Condition?patient={_PATIENT}",
        }
        if medications:
            templates["medications"] = f"MedicationStatement?patient={_PATIENT}"
        for key, resource_type, codes in (
            ("observations", "Observation", findings["Observation"] | results),
            ("procedures", "Procedure", findings["Procedure"] | (orders - results)),
            ("servicerequests", "ServiceRequest", orders),
            ("diagnosticreports", "DiagnosticReport", results),
        ):
            if codes:
                templates[key] = _search(resource_type, codes)
        for template in templates.values():
            check_template(template)  # generated, so a failure here is a bug in this module
        out[hook] = templates
    return out
