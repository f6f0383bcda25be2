"""``evaluate(ruleset, request, now)``: the pure heart of the service (no I/O, no clock, no random ids).

Steps: normalise the record; apply the low-back-pain context gate (knowledge base B4); evaluate every
rule of the hook, each in isolation so one failing rule cannot hide another's card; apply precedence
(``suppresses``) and consolidation (``consolidate_into``); give every suggested order to exactly one card
(the most urgent) and leave out orders already placed or done; render the cards.

A rule that raises is reported, counted by the caller, treated as possibly fired for precedence (so the
advice it would have suppressed stays suppressed), and a warning card says that screening is incomplete.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from cds_hooks.request import HookRequest
from cds_hooks.response import INDICATOR_RANK, Card, CdsResponse, Coding, Source
from rules.engine.cards import (
    PRIORITY_RANK,
    RULE_SYSTEM,
    CardTemplate,
    SuggestionTemplate,
    override_reasons,
    render_card,
)
from rules.engine.conditions import EvalContext
from rules.engine.record import Evidence, OrderFact, PatientRecord
from rules.engine.ruleset import CompiledRule, RuleSet

Status = Literal["fired", "silent", "suppressed", "error", "not-applicable", "no-context"]


@dataclass(frozen=True)
class Verdict:
    """What happened to one rule in one evaluation."""

    rule_id: str
    status: Status
    evidence: tuple[Evidence, ...] = ()
    suppressed_by: tuple[str, ...] = ()
    card: str | None = None  # the rule whose card shows this rule's evidence
    error: str | None = None


@dataclass(frozen=True)
class Evaluation:
    cards: tuple[Card, ...]
    verdicts: dict[str, Verdict]
    notes: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)
    has_context: bool = True

    def response(self) -> CdsResponse:
        return CdsResponse(cards=self.cards)

    def fired(self) -> list[str]:
        return [rule_id for rule_id, v in self.verdicts.items() if v.status == "fired"]


def evaluate(ruleset: RuleSet, request: HookRequest, now: datetime) -> Evaluation:
    """Evaluate a (prefetch-complete) hook request at ``now``.

    Args:
        ruleset: the compiled catalogue.
        request: the validated request, its prefetch already completed by the service.
        now: the evaluation time (timezone-aware); every time window is measured back from it.

    Returns:
        The cards to return, a verdict per rule, data-quality notes and per-rule errors.
    """
    record = PatientRecord.from_request(request, ruleset.builder, now)
    hook = request.hook
    if not record.has_context(ruleset.context):
        silent = {r.id: Verdict(r.id, "no-context") for r in ruleset.rules}
        return Evaluation((), silent, tuple(record.notes), has_context=False)

    def resolve(ctx: EvalContext, rule_id: str) -> list[Evidence] | None:
        if rule_id not in ctx.memo:
            ctx.memo[rule_id] = ruleset.by_id[rule_id].check(ctx)
        return ctx.memo[rule_id]

    ctx = EvalContext(record, now, hook, ruleset.context, resolve)
    results: dict[str, list[Evidence]] = {}
    errors: dict[str, str] = {}
    verdicts: dict[str, Verdict] = {}
    for rule in ruleset.rules:
        if hook not in rule.hooks:
            verdicts[rule.id] = Verdict(rule.id, "not-applicable")
            continue
        try:
            found = resolve(ctx, rule.id)
        except Exception as exc:  # one rule's bug must not hide the other rules' cards
            errors[rule.id] = f"{type(exc).__name__}: {exc}"
            verdicts[rule.id] = Verdict(rule.id, "error", error=errors[rule.id])
            continue
        if found is None:
            verdicts[rule.id] = Verdict(rule.id, "silent")
        else:
            results[rule.id] = found

    suppressors: dict[str, list[str]] = defaultdict(list)
    for rule_id in [*results, *errors]:
        for target in ruleset.by_id[rule_id].suppresses:
            suppressors[target].append(rule_id)
    groups: dict[str, list[tuple[CompiledRule, list[Evidence]]]] = defaultdict(list)
    for rule_id, found in results.items():
        rule = ruleset.by_id[rule_id]
        if suppressors.get(rule_id):
            verdicts[rule_id] = Verdict(rule_id, "suppressed", tuple(found), tuple(suppressors[rule_id]))
            continue
        owner = rule.consolidate_into or rule.id
        verdicts[rule_id] = Verdict(rule_id, "fired", tuple(found), card=owner)
        groups[owner].append((rule, found))

    # Every card also cites the low back pain episode that gates it (knowledge base B3/B4).
    episode = ctx.resolve_episode()
    context_evidence = [episode.evidence()] if episode is not None else []
    order = {rule.id: index for index, rule in enumerate(ruleset.rules)}
    owners = sorted(groups, key=lambda o: (-INDICATOR_RANK[_template(ruleset, o).indicator], order[o]))
    plan = _plan_suggestions(ruleset, owners, groups, record)
    cards = [
        render_card(
            _template(ruleset, owner),
            rules=[rule.id for rule, _ in groups[owner]],
            evidence=[e for _, found in groups[owner] for e in found] + context_evidence,
            suggestions=plan[owner][0],
            already=plan[owner][1],
            hook_instance=request.hook_instance,
            patient_reference=record.patient_reference(),
            ruleset_version=ruleset.version,
            terminology=ruleset.terminology,
        )
        for owner in owners
    ]
    if errors:
        cards.insert(0, _incomplete_card(sorted(errors), ruleset.version))
    notes = tuple(sorted(set(record.notes) | ctx.notes))
    return Evaluation(tuple(cards), {r.id: verdicts[r.id] for r in ruleset.rules}, notes, errors)


def _template(ruleset: RuleSet, owner: str) -> CardTemplate:
    card = ruleset.by_id[owner].card
    assert card is not None  # the loader guarantees a consolidation target has a card
    return card


def _plan_suggestions(
    ruleset: RuleSet,
    owners: list[str],
    groups: dict[str, list[tuple[CompiledRule, list[Evidence]]]],
    record: PatientRecord,
) -> dict[str, tuple[list[SuggestionTemplate], list[tuple[SuggestionTemplate, OrderFact]]]]:
    """Give each order to one card only (highest priority, then most urgent card), and drop orders that are
    being ordered now, are already active, or were done within their window (knowledge base precedence)."""
    best: dict[tuple[str, str], tuple[tuple[int, int, int], str]] = {}
    for rank, owner in enumerate(owners):
        template = _template(ruleset, owner)
        for suggestion in template.suggestions:
            score = (PRIORITY_RANK[suggestion.priority], INDICATOR_RANK[template.indicator], -rank)
            if suggestion.code not in best or score > best[suggestion.code][0]:
                best[suggestion.code] = (score, owner)
    plan: dict[str, tuple[list[SuggestionTemplate], list[tuple[SuggestionTemplate, OrderFact]]]] = {}
    for owner in owners:
        template = _template(ruleset, owner)
        kept: list[SuggestionTemplate] = []
        already: list[tuple[SuggestionTemplate, OrderFact]] = []
        for suggestion in template.suggestions:
            if best[suggestion.code][1] != owner:
                continue
            existing = _existing_order(suggestion, template.indicator, record)
            if existing is not None:
                already.append((suggestion, existing))
            else:
                kept.append(suggestion)
        plan[owner] = (kept, already)
    return plan


def _existing_order(
    suggestion: SuggestionTemplate, indicator: str, record: PatientRecord
) -> OrderFact | None:
    since = record.now - suggestion.window
    for draft in record.drafts:
        if suggestion.code in draft.codes:
            return draft
    for order in record.orders:
        if suggestion.code not in order.codes or order.when is None or order.when < since:
            continue
        if order.status in ("active", "on-hold"):
            return order
        # A result from before an emergency does not answer it: critical cards re-suggest completed tests.
        if order.status == "completed" and indicator != "critical":
            return order
    if indicator != "critical":
        for fact in record.by_code.get(suggestion.code, ()):
            if fact.resource_type == "Observation" and fact.last_seen is not None and fact.last_seen >= since:
                return OrderFact(
                    "Observation",
                    fact.reference,
                    fact.codes,
                    fact.label,
                    "resulted",
                    fact.last_seen,
                    fact.date_text,
                )
    return None


def _incomplete_card(failed: list[str], version: str) -> Card:
    return Card(
        summary="Decision support incomplete: some rules could not be evaluated; assess red flags clinically",
        detail=(
            "Lumbar CDS could not evaluate these rules for this patient, so its red-flag screening is "
            "incomplete. Ask about and examine for red flags (bladder or bowel disturbance, saddle "
            "numbness, progressive leg weakness, fever, weight loss, cancer history, trauma) directly.\n\n"
            + "\n".join(f"- {rule_id}" for rule_id in failed)
        ),
        indicator="warning",
        source=Source(
            label="Lumbar CDS",
            topic=Coding(
                system=RULE_SYSTEM,
                code="engine-incomplete",
                display="Rule evaluation failed",
                version=version,
            ),
        ),
        override_reasons=override_reasons("warning"),
        extension={"lumbar-cds": {"rules": failed, "rulesetVersion": version}},
    )
