"""Deciding, per request, which orders each card suggests (knowledge base, rule precedence).

- A suggestion with ``only_if`` is offered only when its condition holds, one with ``min_indicator`` only
  when the card is that urgent.
- While a modifying rule fires (pregnancy, R24), every card's orders are swapped as it says; the swapped
  suggestion is relabelled and the card explains why.
- An order is suggested once only: by the card with the most urgent priority for it (then the more urgent
  card, then the earlier one). Tests the terminology declares the same (a blood count with or without
  differential) count as one. It is recommended there if any card that wanted it recommends it.
- An order being placed now (a draft), already active, or done within its window is not suggested again and
  is listed as such; a completed test, or an active order placed before the window, does not stop a critical
  card re-suggesting it, since neither answers an emergency.
- ``remove_draft`` suggestions delete the hook's matching draft orders.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rules.engine.codes.terminology import CodeKey, Terminology
from rules.engine.compiler.context import INDICATOR_ORDER, EvalContext
from rules.engine.evaluation.cards import PRIORITY_RANK, CardPlan, OrderTemplate, PlannedOrder
from rules.engine.record.facts import OrderFact
from rules.engine.record.patient import PatientRecord


@dataclass(frozen=True)
class Modifier:
    """Order swaps a firing rule imposes on every card (``modifies`` in the rule file)."""

    reason: str
    note: str
    replace: dict[CodeKey, dict[str, OrderTemplate]]  # source code -> priority -> replacement


def _candidates(
    plan: CardPlan, ctx: EvalContext, modifiers: list[Modifier], terminology: Terminology
) -> list[PlannedOrder]:
    wanted: dict[CodeKey, PlannedOrder] = {}
    for spec in plan.template.suggestions:
        if spec.min_indicator and INDICATOR_ORDER[plan.indicator] < INDICATOR_ORDER[spec.min_indicator]:
            continue
        if spec.only_if is not None and spec.only_if(ctx) is None:
            continue
        if spec.remove_draft is not None:
            drafts = [d for d in ctx.record.drafts if set(d.codes) & spec.remove_draft.keys]
            if drafts:
                plan.removals.append((spec, drafts))
            continue
        order = spec.order_for(plan.indicator)
        assert order is not None  # the schema requires an order or a removal
        planned = PlannedOrder(spec.label, spec.recommended, order, spec.window)
        for modifier in modifiers:
            replacement = modifier.replace.get(order.code, {}).get(order.priority)
            if replacement is not None:
                label = f"{replacement.display} instead of {order.display} ({modifier.reason})"
                planned = PlannedOrder(label[:120], spec.recommended, replacement, spec.window)
                if modifier.note not in plan.notes:
                    plan.notes.append(modifier.note)
        key = terminology.canonical(planned.order.code)
        kept = wanted.get(key)
        if kept is None or PRIORITY_RANK[planned.order.priority] > PRIORITY_RANK[kept.order.priority]:
            wanted[key] = planned
    return list(wanted.values())


def plan_suggestions(
    plans: list[CardPlan], ctx: EvalContext, modifiers: list[Modifier], terminology: Terminology
) -> None:
    """Fill ``orders``, ``removals`` and ``already`` of each card plan (ordered most urgent first)."""
    candidates = [_candidates(plan, ctx, modifiers, terminology) for plan in plans]
    best: dict[CodeKey, tuple[tuple[int, int, bool, int], int]] = {}
    recommended: set[CodeKey] = set()
    for rank, (plan, wanted) in enumerate(zip(plans, candidates, strict=True)):
        for planned in wanted:
            key = terminology.canonical(planned.order.code)
            if planned.recommended:
                recommended.add(key)
            # an order belongs first on the most urgent card, then on a referral or test card, then earlier
            owns = plan.template.category in ("referral", "test")
            score = (PRIORITY_RANK[planned.order.priority], INDICATOR_ORDER[plan.indicator], owns, -rank)
            if key not in best or score > best[key][0]:
                best[key] = (score, rank)
    for rank, (plan, wanted) in enumerate(zip(plans, candidates, strict=True)):
        for planned in wanted:
            key = terminology.canonical(planned.order.code)
            if best[key][1] != rank:
                continue
            if key in recommended and not planned.recommended:
                planned = replace(planned, recommended=True)
            same = terminology.same_test(planned.order.code)
            existing = existing_order(same, planned, plan.indicator, ctx.record)
            if existing is not None:
                plan.already.append((planned.order, existing))
            else:
                plan.orders.append(planned)


def existing_order(
    codes: frozenset[CodeKey], planned: PlannedOrder, indicator: str, record: PatientRecord
) -> OrderFact | None:
    """The draft, active or recent order or result that makes suggesting the order again pointless."""
    since = record.now - planned.window
    for draft in record.drafts:
        if codes & set(draft.codes):
            return draft
    for item in record.orders:
        if not codes & set(item.codes):
            continue
        recent = item.when is not None and item.when >= since
        # An open order is pending, however old; but one placed before the window does not answer an
        # emergency (a stale routine order is no MRI within 4 hours).
        if item.status in ("active", "on-hold") and (recent or indicator != "critical"):
            return item
        if item.status == "completed" and recent and indicator != "critical":
            return item
    if indicator != "critical":
        for code in codes:
            for fact in record.by_code.get(code, ()):
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
