"""Why each rule fired or stayed silent: the condition tree of every rule, with what held and the evidence.

Used by ``lumbar explain`` offline; the request path never builds these traces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cds_hooks.request import HookRequest
from rules.engine.compiler.context import Check, EvalContext
from rules.engine.compiler.ruleset import CompiledRule, RuleSet
from rules.engine.evaluation.evaluate import Evaluation, evaluate, prepare
from rules.engine.record.facts import Evidence


@dataclass
class Trace:
    """One condition node: how it reads, whether it held, its evidence and its sub-conditions."""

    text: str
    holds: bool
    evidence: list[Evidence] = field(default_factory=list)
    children: list[Trace] = field(default_factory=list)


def trace(rule: CompiledRule, check: Check, ctx: EvalContext) -> Trace:
    """Evaluate ``check`` and each of its sub-conditions, for display."""
    found = check(ctx)
    description = rule.descriptions.get(check)
    text = description.text if description else "(condition)"
    children = [trace(rule, child, ctx) for child in description.children] if description else []
    evidence = found if found and not children else []
    return Trace(text, found is not None, evidence, children)


def explain(ruleset: RuleSet, request: HookRequest, now: datetime) -> tuple[Evaluation, dict[str, Trace]]:
    """The evaluation, and for every rule of the hook the trace of its ``when``."""
    evaluation = evaluate(ruleset, request, now)
    ctx = prepare(ruleset, request, now)
    traces = {rule.id: trace(rule, rule.check, ctx) for rule in ruleset.rules_for(request.hook)}
    return evaluation, traces


def render(node: Trace, depth: int = 0) -> list[str]:
    """Indented lines: ``[x]`` held, ``[ ]`` did not, with evidence under leaves that held."""
    pad = "    " + "  " * depth
    lines = [f"{pad}[{'x' if node.holds else ' '}] {node.text}"]
    for item in node.evidence:
        where = f" ({item.reference})" if item.reference else ""
        when = f", {item.date}" if item.date else ""
        lines.append(f"{pad}      - {item.named}: {item.value}{when}{where}")
    for child in node.children:
        lines.extend(render(child, depth + 1))
    return lines
