"""Deciding, per request, which orders each card suggests (knowledge base, rule precedence).

- A suggestion with ``only_if`` is offered only when its condition holds.
- While a modifying rule fires (pregnancy, R24), every card's orders are swapped as it says.
- An order is suggested once only: by the card with the most urgent priority for it (then the more
  urgent card, then the earlier one).
- An order being placed now (a draft), already active, or done within its window is not suggested again
  and is listed as such; a completed test does not stop a critical card re-suggesting it, since a result
  from before an emergency does not answer it.
- ``remove_draft`` suggestions delete the hook's matching draft orders.
"""

from __future__ import annotations

from rules.engine.cards import PRIORITY_RANK, CardPlan, OrderTemplate, SuggestionTemplate
from rules.engine.context import INDICATOR_ORDER, EvalContext
from rules.engine.facts import OrderFact
from rules.engine.record import PatientRecord
from rules.engine.terminology import CodeKey

Replacements = dict[CodeKey, dict[str, OrderTemplate]]


def plan_suggestions(plans: list[CardPlan], ctx: EvalContext, replacements: Replacements) -> None:
    """Fill ``orders``, ``removals`` and ``already`` of each card plan (ordered most urgent first)."""
    candidates: list[list[tuple[SuggestionTemplate, OrderTemplate]]] = []
    for plan in plans:
        wanted: dict[CodeKey, tuple[SuggestionTemplate, OrderTemplate]] = {}
        for spec in plan.template.suggestions:
            if spec.min_indicator and INDICATOR_ORDER[plan.indicator] < INDICATOR_ORDER[spec.min_indicator]:
                continue
            if spec.only_if is not None and spec.only_if(ctx) is None:
                continue
            if spec.remove_draft is not None:
                keys = spec.remove_draft.keys
                drafts = [d for d in ctx.record.drafts if set(d.codes) & keys]
                if drafts:
                    plan.removals.append((spec, drafts))
                continue
            assert spec.order is not None  # the schema requires an order or a removal
            order = replacements.get(spec.order.code, {}).get(spec.order.priority, spec.order)
            kept = wanted.get(order.code)
            if kept is None or PRIORITY_RANK[order.priority] > PRIORITY_RANK[kept[1].priority]:
                wanted[order.code] = (spec, order)
        candidates.append(list(wanted.values()))
    best: dict[CodeKey, tuple[tuple[int, int, int], int]] = {}
    for rank, (plan, wanted_here) in enumerate(zip(plans, candidates, strict=True)):
        for _, order in wanted_here:
            score = (PRIORITY_RANK[order.priority], INDICATOR_ORDER[plan.indicator], -rank)
            if order.code not in best or score > best[order.code][0]:
                best[order.code] = (score, rank)
    for rank, (plan, wanted_here) in enumerate(zip(plans, candidates, strict=True)):
        for spec, order in wanted_here:
            if best[order.code][1] != rank:
                continue
            existing = existing_order(order, spec, plan.indicator, ctx.record)
            if existing is not None:
                plan.already.append((order, existing))
            else:
                plan.orders.append((spec, order))


def existing_order(
    order: OrderTemplate, spec: SuggestionTemplate, indicator: str, record: PatientRecord
) -> OrderFact | None:
    """The draft, active or recent order or result that makes suggesting ``order`` again pointless."""
    since = record.now - spec.window
    for draft in record.drafts:
        if order.code in draft.codes:
            return draft
    for item in record.orders:
        if order.code not in item.codes or item.when is None or item.when < since:
            continue
        if item.status in ("active", "on-hold"):
            return item
        if item.status == "completed" and indicator != "critical":
            return item
    if indicator != "critical":
        for fact in record.by_code.get(order.code, ()):
            if (
                fact.resource_type in ("Observation", "Procedure")
                and fact.last_seen is not None
                and (fact.last_seen >= since)
            ):
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
