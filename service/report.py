"""Per-rule statistics from the audit trail and feedback: what fired, what clinicians did with it.

Counting rules (also in docs/feedback-and-audit.md):

- ``fired``, ``suppressed``, ``errors``: hook calls in the period in which the rule did that;
- ``cards``: cards the rule owned in those calls;
- ``accepted`` / ``overridden``: distinct cards of the rule with that feedback outcome, for feedback received
  in the period (the same card accepted twice counts once);
- ``acceptance_rate``: accepted / (accepted + overridden), ``None`` without feedback;
- ``override_reasons``: the most frequent override reasons (display, else code), most frequent first.

Feedback is linked to its rule when it is stored; feedback on a card the audit trail did not know then is
linked here through the audit trail, and otherwise reported under ``(unknown card)``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.sql import Select

from service.storage.database import Database
from service.storage.tables import audit_call, audit_card, audit_rule, feedback

UNKNOWN_CARD = "(unknown card)"
TOP_REASONS = 3


@dataclass
class RuleStats:
    rule_id: str
    fired: int = 0
    suppressed: int = 0
    errors: int = 0
    cards: int = 0
    accepted: int = 0
    overridden: int = 0
    override_reasons: list[tuple[str, int]] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float | None:
        answered = self.accepted + self.overridden
        return round(self.accepted / answered, 3) if answered else None


@dataclass
class Report:
    since: datetime | None
    until: datetime | None
    service: str | None
    calls: int
    rules: list[RuleStats]

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "service": self.service,
            "calls": self.calls,
            "rules": [
                {
                    **{k: v for k, v in asdict(rule).items() if k != "override_reasons"},
                    "acceptance_rate": rule.acceptance_rate,
                    "override_reasons": [{"reason": r, "count": n} for r, n in rule.override_reasons],
                }
                for rule in self.rules
            ],
        }

    def to_table(self) -> str:
        header = (
            "rule",
            "fired",
            "suppr.",
            "errors",
            "cards",
            "accepted",
            "overridden",
            "accept %",
            "top reasons",
        )
        rows = [header]
        for rule in self.rules:
            rate = rule.acceptance_rate
            reasons = "; ".join(f"{r} ({n})" for r, n in rule.override_reasons)
            rows.append(
                (
                    rule.rule_id,
                    str(rule.fired),
                    str(rule.suppressed),
                    str(rule.errors),
                    str(rule.cards),
                    str(rule.accepted),
                    str(rule.overridden),
                    "-" if rate is None else f"{rate * 100:.0f}",
                    reasons or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = [
            "  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]])
            for row in rows
        ]
        period = f"{_show(self.since, 'the beginning')} to {_show(self.until, 'now')}"
        scope = f"service {self.service}" if self.service else "all services"
        title = f"Lumbar CDS rule report: {period}, {scope}, {self.calls} hook calls"
        if not self.rules:
            return f"{title}\n(no rule fired and no feedback in this period)\n"
        return title + "\n" + "\n".join(line.rstrip() for line in lines) + "\n"


def _show(moment: datetime | None, otherwise: str) -> str:
    return moment.isoformat(timespec="seconds") if moment else otherwise


def parse_bound(value: str, *, end: bool) -> datetime:
    """A report bound: a date (``--until`` includes that whole day) or an ISO 8601 date-time (UTC if naive).

    Raises:
        ValueError: not a date or date-time.
    """
    try:
        day = date.fromisoformat(value)
    except ValueError:
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def _within(
    query: Select[Any],
    since: datetime | None,
    until: datetime | None,
    service: str | None,
    *,
    at: Any = audit_call.c.created_at,
    service_column: Any = audit_call.c.service_id,
) -> Any:
    """``query`` restricted to ``[since, until)`` on ``at`` and to one service (by default: the calls')."""
    if since is not None:
        query = query.where(at >= since)
    if until is not None:
        query = query.where(at < until)
    if service is not None:
        query = query.where(service_column == service)
    return query


async def build_report(
    database: Database,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    service: str | None = None,
) -> Report:
    """The per-rule report for calls and feedback in ``[since, until)``, for one service or all."""
    stats: dict[str, RuleStats] = {}

    def rule(rule_id: str) -> RuleStats:
        return stats.setdefault(rule_id, RuleStats(rule_id))

    joined = audit_rule.join(audit_call, audit_rule.c.call_id == audit_call.c.call_id)
    outcomes = _within(
        select(audit_rule.c.rule_id, audit_rule.c.outcome, func.count())
        .select_from(joined)
        .group_by(audit_rule.c.rule_id, audit_rule.c.outcome),
        since,
        until,
        service,
    )
    cards = _within(
        select(audit_card.c.rule_id, func.count())
        .select_from(audit_card.join(audit_call, audit_card.c.call_id == audit_call.c.call_id))
        .group_by(audit_card.c.rule_id),
        since,
        until,
        service,
    )
    calls = _within(select(func.count()).select_from(audit_call), since, until, service)
    # Each rule a card is credited to (one audit row each, Evaluation.credited): feedback on the card
    # counts for every one of them.
    owner = select(audit_card.c.card_uuid, audit_card.c.rule_id.label("owner")).distinct().subquery()
    answers = _within(
        select(
            feedback.c.card_uuid,
            feedback.c.outcome,
            feedback.c.rule_id,
            owner.c.owner,
            feedback.c.override_display,
            feedback.c.override_code,
        ).select_from(feedback.outerjoin(owner, owner.c.card_uuid == feedback.c.card_uuid)),
        since,
        until,
        service,
        at=feedback.c.received_at,
        service_column=feedback.c.service_id,
    )

    async with database.engine.connect() as connection:
        for rule_id, outcome, count in await connection.execute(outcomes):
            setattr(rule(rule_id), "errors" if outcome == "error" else outcome, count)
        for rule_id, count in await connection.execute(cards):
            rule(rule_id).cards = count
        total_calls = (await connection.execute(calls)).scalar_one()
        answered: dict[tuple[str, str], set[str]] = defaultdict(set)
        reasons: dict[str, Counter[str]] = defaultdict(Counter)
        for card_uuid, outcome, linked, owned, display, code in await connection.execute(answers):
            rule_id = owned or linked or UNKNOWN_CARD
            answered[rule_id, outcome].add(card_uuid)
            if outcome == "overridden":
                reasons[rule_id][display or code or "(no reason given)"] += 1
    for (rule_id, outcome), uuids in answered.items():
        setattr(rule(rule_id), "accepted" if outcome == "accepted" else "overridden", len(uuids))
    for rule_id, counter in reasons.items():
        rule(rule_id).override_reasons = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[
            :TOP_REASONS
        ]
    ordered = sorted(stats.values(), key=lambda s: (-s.fired, s.rule_id))
    return Report(since, until, service, total_calls, ordered)
