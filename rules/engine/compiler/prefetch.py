"""Prefetch templates derived from what the loaded rules read, so the EHR sends exactly what is needed.

Per resource type, searches asking only for the codes some rule of that hook reads, in the code systems
that resource type is coded in: findings and measurements (Observation, Procedure), and orders and results
(ServiceRequest, DiagnosticReport) for the codes the rules check or suggest; a search longer than 2,000
characters is split into several keys (``observations``, ``observations-2``...). The problem list
(Condition) and the medication lists (MedicationStatement, MedicationRequest) are asked for whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cds_hooks.prefetch import check_template
from rules.engine.codes.terminology import CPT, LOINC, SNOMED, CodeKey
from rules.engine.model.schema import ALL_HOOKS

LOCAL = "urn:lbp-cds:local"

if TYPE_CHECKING:
    from rules.engine.compiler.ruleset import CompiledRule, RuleSet

_PATIENT = "{{context.patientId}}"
MAX_TEMPLATE = 2000
"""The longest search a template may be: FHIR servers and proxies commonly refuse longer URLs."""

# The code systems each resource type is coded in, as the rules' value sets use them: an Observation is
# never coded in ICD-10-CM, a Procedure never in LOINC (searching for them only lengthens the URL).
_SYSTEMS: dict[str, frozenset[str]] = {
    "Observation": frozenset({LOINC, SNOMED, LOCAL}),
    "Procedure": frozenset({SNOMED, CPT, LOCAL}),
    "ServiceRequest": frozenset({LOINC, SNOMED, CPT, LOCAL}),
    "DiagnosticReport": frozenset({LOINC}),
}


def _searches(key: str, resource_type: str, codes: set[CodeKey]) -> dict[str, str]:
    """Code searches of ``resource_type`` for ``codes``, split into templates of at most
    :data:`MAX_TEMPLATE` characters (``key``, ``key-2``, ...), codes in a stable order."""
    allowed = _SYSTEMS[resource_type]
    tokens = [f"{system}|{code}" for system, code in sorted(codes) if system in allowed]
    base = f"{resource_type}?patient={_PATIENT}&code="
    out: dict[str, str] = {}
    chunk: list[str] = []
    for token in tokens:
        if chunk and len(base) + len(",".join([*chunk, token])) > MAX_TEMPLATE:
            out[key if not out else f"{key}-{len(out) + 1}"] = base + ",".join(chunk)
            chunk = []
        chunk.append(token)
    if chunk:
        out[key if not out else f"{key}-{len(out) + 1}"] = base + ",".join(chunk)
    return out


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
        for vs in [ruleset.back_pain, *(ruleset.valuesets[n] for rule in rules for n in rule.reads)]:
            for resource_type in vs.resources:
                findings[resource_type] |= vs.keys
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
        # The problem list and the medication lists are fetched whole: they are short, a diagnosis is coded
        # in many ways (ICD-10-CM anywhere in a hierarchy, SNOMED CT concepts no list holds) and a product by
        # its own code, all matched here by hierarchy or text.
        templates = {
            "patient": f"Patient/{_PATIENT}",
            "conditions": f"Condition?patient={_PATIENT}",
        }
        if medications:
            templates["medications"] = f"MedicationStatement?patient={_PATIENT}"
            templates["medicationrequests"] = f"MedicationRequest?patient={_PATIENT}"
        if findings["Procedure"]:  # transplants, surgery, therapies: many codes, so the list is read whole
            templates["procedures"] = f"Procedure?patient={_PATIENT}"
        for key, resource_type, codes in (
            ("observations", "Observation", findings["Observation"] | results),
            ("procedures", "Procedure", set() if findings["Procedure"] else orders - results),
            ("servicerequests", "ServiceRequest", orders),
            ("diagnosticreports", "DiagnosticReport", results),
        ):
            templates.update(_searches(key, resource_type, codes))
        for template in templates.values():
            check_template(template)  # generated, so a failure here is a bug in this module
        out[hook] = templates
    return out
