"""``evaluate(ruleset, request, now)``: the pure heart of the service (no I/O, no clock, no random ids).

Steps: normalise the record; apply the low-back-pain gate (knowledge base B4); evaluate every
rule of the hook, each in isolation so one failing rule cannot hide another's card, with its escalations;
apply precedence (``suppresses``, at the suppressor's effective indicator) and consolidation
(``consolidate_into``); plan each card's orders (:mod:`suggestions`); rate draft imaging orders
(:mod:`pama`); render the cards, most urgent first.

A rule that raises is reported, counted by the caller, treated as possibly fired at its highest level for
precedence (so the advice it would have suppressed stays suppressed), and a warning card says that
screening is incomplete.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cds_hooks.request import HookRequest
from cds_hooks.response import Action, Card, CdsResponse, Coding, Source
from rules.engine.compiler.context import INDICATOR_ORDER, EvalContext
from rules.engine.compiler.ruleset import CompiledRule, RuleSet
from rules.engine.evaluation import sufficiency
from rules.engine.evaluation.cards import RULE_SYSTEM, CardPlan, override_reasons, render_card
from rules.engine.evaluation.pama import RATING_BY_VERDICT, rating_action
from rules.engine.evaluation.suggestions import plan_suggestions
from rules.engine.record.facts import Evidence
from rules.engine.record.patient import PatientRecord

INCOMPLETE_TOPIC = "engine-incomplete"  # the topic of the card saying some rules could not be evaluated
Status = Literal["fired", "silent", "suppressed", "error", "not-applicable", "no-context"]


@dataclass(frozen=True)
class Verdict:
    """What happened to one rule in one evaluation."""

    rule_id: str
    status: Status
    evidence: tuple[Evidence, ...] = ()
    suppressed_by: tuple[str, ...] = ()
    card: str | None = None  # the rule whose card shows this rule's evidence
    indicator: str | None = None  # the effective indicator, escalations applied
    error: str | None = None
    undecided: tuple[Evidence, ...] = ()  # a reassuring rule that fired on insufficient data: why


@dataclass(frozen=True)
class Evaluation:
    cards: tuple[Card, ...]
    verdicts: dict[str, Verdict]
    notes: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)
    has_back_pain: bool = True  # False: no low back pain in the record, so no rule acted
    system_actions: tuple[Action, ...] = ()
    # The rules each card is credited to, parallel to ``cards``: its topic's rule first, then every rule
    # whose evidence it shows (a merged cauda equina card is credited to each contributing rule).
    credits: tuple[tuple[str, ...], ...] = ()

    def credited(self) -> list[tuple[str, Card]]:
        """(rule id, card) for every rule each card is credited to, cards in the order they are shown."""
        pairs = zip(self.cards, self.credits, strict=True)
        return [(rule_id, card) for card, rules in pairs for rule_id in rules]

    def response(self) -> CdsResponse:
        """The CDS Hooks response. System actions are also sent as ``extension.systemActions``, where the
        CDS Hooks sandbox and the Argonaut PAMA guide read them."""
        extension: dict[str, Any] | None = None
        if self.system_actions:
            extension = {"systemActions": [action.to_wire() for action in self.system_actions]}
        return CdsResponse(cards=self.cards, system_actions=self.system_actions, extension=extension)

    def fired(self) -> list[str]:
        return [rule_id for rule_id, v in self.verdicts.items() if v.status == "fired"]


def _initial_verdicts(ruleset: RuleSet, hook: str | None) -> dict[str, Verdict]:
    """Every rule's verdict before any is resolved, in catalogue order: "silent" for the rules of ``hook``,
    "not-applicable" for the others, "no-context" for all when ``hook`` is None (no back pain recorded).
    Verdicts without evidence are immutable, so these are made once per rule set; callers copy the dict."""
    key = ("initial verdicts", hook)
    if key not in ruleset.memo:
        serves = {rule.id for rule in ruleset.rules_for(hook)} if hook is not None else set()
        ruleset.memo[key] = {
            r.id: Verdict(
                r.id, "no-context" if hook is None else "silent" if r.id in serves else "not-applicable"
            )
            for r in ruleset.rules
        }
    initial: dict[str, Verdict] = ruleset.memo[key]
    return initial


def prepare(ruleset: RuleSet, request: HookRequest, now: datetime) -> EvalContext:
    """The normalised record and a fresh evaluation context for ``request`` at ``now``."""
    record = PatientRecord.from_request(request, ruleset.builder, now)
    record.unavailable = ruleset.unavailable_types(request.hook, request.unavailable)
    return EvalContext(
        record,
        now,
        request.hook,
        ruleset.back_pain,
        ruleset.by_id,
        ruleset.red_flag_ids,
        recognised=ruleset.recognised,
        screening=ruleset.screening(request.hook),
    )


def evaluate(ruleset: RuleSet, request: HookRequest, now: datetime) -> Evaluation:
    """Evaluate a (prefetch-complete) hook request at ``now``.

    Args:
        ruleset: the compiled catalogue.
        request: the validated request, its prefetch already completed by the service.
        now: the evaluation time (timezone-aware); every time window is measured back from it.

    Returns:
        The cards and system actions to return, a verdict per rule, data-quality notes, per-rule errors.
    """
    ctx = prepare(ruleset, request, now)
    record, hook = ctx.record, ctx.hook
    if not record.has_back_pain(ruleset.back_pain):
        silent = _initial_verdicts(ruleset, None).copy()
        return Evaluation((), silent, tuple(record.notes), has_back_pain=False)
    present = record.present()
    results: dict[str, list[Evidence]] = {}
    levels: dict[str, str] = {}
    errors: dict[str, str] = {}
    # Every rule starts "silent" (this hook's) or "not-applicable", in catalogue order; a copy of a dict made
    # once per rule set and hook. Only the rules that may fire are looked at again.
    verdicts = _initial_verdicts(ruleset, hook).copy()
    for rule in ruleset.rules_for(hook):
        if not rule.may_fire(present):  # what resolving it would conclude, without the calls
            continue
        try:
            level = ctx.indicator(rule.id)  # resolves the rule first
        except Exception as exc:  # noqa: BLE001  # one rule's bug must not hide the other rules' cards
            errors[rule.id] = f"{type(exc).__name__}: {exc}"
            verdicts[rule.id] = Verdict(rule.id, "error", error=errors[rule.id])
            continue
        found = ctx.memo[rule.id]
        if found is not None and level is not None:  # (a level is only given to a rule that resolved true)
            results[rule.id] = found + ctx.escalation_evidence.get(rule.id, [])
            levels[rule.id] = level

    suppressors = _suppressors(ruleset, levels, errors)
    groups: dict[str, list[tuple[CompiledRule, list[Evidence]]]] = defaultdict(list)
    for rule_id, found in results.items():
        rule = ruleset.by_id[rule_id]
        if suppressors.get(rule_id):
            verdicts[rule_id] = Verdict(
                rule_id, "suppressed", tuple(found), tuple(suppressors[rule_id]), indicator=levels[rule_id]
            )
            continue
        owner = rule.consolidate_into or rule.id
        doubts = tuple(sufficiency.doubts(rule.reassurance, ctx)) if rule.reassurance else ()
        verdicts[rule_id] = Verdict(
            rule_id, "fired", tuple(found), card=owner, indicator=levels[rule_id], undecided=doubts
        )
        groups[owner].append((rule, found))

    plans = _card_plans(ruleset, ctx, groups, levels, verdicts)
    modifiers = [modifier for rule_id, modifier in ruleset.modifiers if verdicts[rule_id].status == "fired"]
    plan_suggestions(plans, ctx, modifiers, ruleset.terminology)
    cards = [
        render_card(
            plan,
            now=ctx.now,
            hook_instance=request.hook_instance,
            patient_reference=record.patient_reference(),
            ruleset_version=ruleset.version,
            terminology=ruleset.terminology,
        )
        for plan in plans
    ]
    credits = [plan.credits for plan in plans]
    if errors:
        cards.insert(0, _incomplete_card(sorted(errors), ruleset.version))
        credits.insert(0, (INCOMPLETE_TOPIC, *sorted(errors)))
    actions = _ratings(ruleset, ctx, verdicts, request.hook_instance)
    notes = tuple(sorted(set(record.notes) | ctx.notes))
    return Evaluation(
        tuple(cards),
        verdicts,  # in catalogue order: every rule has had its entry since _initial_verdicts
        notes,
        errors,
        system_actions=tuple(actions),
        credits=tuple(credits),
    )


def _suppressors(ruleset: RuleSet, levels: dict[str, str], errors: dict[str, str]) -> dict[str, list[str]]:
    """Who suppresses whom: a rule's entry applies once its effective indicator reaches the entry's level.
    A rule that failed is taken at its highest possible level."""
    out: dict[str, list[str]] = defaultdict(list)
    for rule_id in [*levels, *errors]:
        rule = ruleset.by_id[rule_id]
        level = INDICATOR_ORDER[levels.get(rule_id) or rule.max_indicator]
        for target, at in rule.suppresses:
            if level >= INDICATOR_ORDER[at]:
                out[target].append(rule_id)
    return out


def _card_plans(
    ruleset: RuleSet,
    ctx: EvalContext,
    groups: dict[str, list[tuple[CompiledRule, list[Evidence]]]],
    levels: dict[str, str],
    verdicts: dict[str, Verdict],
) -> list[CardPlan]:
    order = ruleset.order
    # Every card also cites the episode that gates it (B3/B4), or, with no dated pain record, what gives the
    # context at all.
    episode = ctx.resolve_episode()
    back_pain = (
        [episode.evidence()] if episode is not None else ctx.record.back_pain_evidence(ctx.back_pain)[:3]
    )
    plans = []
    for owner, members in groups.items():
        template = ruleset.by_id[owner].card
        assert template is not None  # the loader guarantees a consolidation target has a card
        level = max((levels[rule.id] for rule, _ in members), key=lambda x: INDICATOR_ORDER[x])
        summary = ruleset.by_id[owner].summary_at(ctx, levels.get(owner)) or template.summary
        evidence = [e for _, found in members for e in found]
        reassurance = ruleset.by_id[owner].reassurance
        doubts = list(verdicts[owner].undecided)
        if reassurance is not None and doubts:  # not enough seen to reassure: say so, and why
            template, level, summary = (
                reassurance.template,
                reassurance.indicator,
                reassurance.template.summary,
            )
            evidence = doubts + evidence
        # the rules whose evidence the card shows: the owner first when it fired itself (attribution)
        rule_ids = sorted((rule.id for rule, _ in members), key=lambda rule_id: rule_id != owner)
        plan = CardPlan(template, level, summary, rule_ids, evidence + back_pain)
        plan.notes = [text for check, text in template.notes if check(ctx) is not None]
        if reassurance is not None and not doubts:
            plan.notes.append(sufficiency.checked_line(ctx))
        elif reassurance is None and ctx.record.unavailable:
            read = frozenset().union(*(ruleset.types_read(rule.id) for rule, _ in members))
            plan.notes.extend(sufficiency.unavailable_note(ctx.record.unavailable, read))
        plans.append(plan)
    plans.sort(key=lambda p: (-INDICATOR_ORDER[p.indicator], order[p.template.rule_id]))
    return plans


def _ratings(
    ruleset: RuleSet, ctx: EvalContext, verdicts: dict[str, Verdict], hook_instance: str
) -> list[Action]:
    actions: list[Action] = []
    if not ctx.record.drafts:
        return actions
    for rule_id, rated in ruleset.ratings:
        verdict = verdicts[rule_id]
        # a reassuring rule that could not decide rates nothing as not appropriate
        rating = "no-criteria-apply" if verdict.undecided else RATING_BY_VERDICT.get(verdict.status)
        if rating is None:
            continue
        for draft in ctx.record.drafts:
            if set(draft.codes) & rated.keys:
                action = rating_action(draft, rating, hook_instance)
                if action is not None:
                    actions.append(action)
    return actions


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
                code=INCOMPLETE_TOPIC,
                display="Rule evaluation failed",
                version=version,
            ),
        ),
        override_reasons=override_reasons("warning"),
        extension={"lumbar-cds": {"rules": failed, "rulesetVersion": version}},
    )
