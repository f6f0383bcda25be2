"""The audit trail of hook calls, written off the request path.

A hook call hands its record to the :class:`AuditWriter` and answers at once; a background task writes the
pending records (at most ``MAX_WRITE`` per transaction) every ``interval_s`` or as soon as ``batch_size``
are waiting. A failed write keeps the records and retries. When too many are pending (the database is slow
or down) callers wait for the next flush instead of piling up memory: nothing handed over is dropped.
Shutdown flushes whatever is left before the database closes. (A SIGKILL loses at most the records of the
last ``interval_s``; feedback, which the client is told was stored, is committed before the answer and
never depends on this.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog

from rules.engine import Evaluation
from service.metrics import Metrics
from service.storage.database import Database

log = structlog.get_logger("lumbar.audit")
PatientMode = Literal["hash", "plain", "none"]
MAX_WRITE = 5_000  # records per audit transaction


@dataclass(slots=True)
class AuditCard:
    card_uuid: str
    rule_id: str
    indicator: str
    suggestions: tuple[str, ...] = ()


@dataclass(slots=True)
class AuditRule:
    rule_id: str
    outcome: Literal["fired", "suppressed", "error"]
    detail: str | None = None


@dataclass(slots=True)
class AuditRecord:
    """One hook call as the audit trail keeps it. (Slotted, not frozen: a frozen dataclass sets each field
    through ``object.__setattr__``, and one record is made per hook call.)"""

    service_id: str
    hook: str
    status: int
    latency_ms: float
    ruleset_version: str
    hook_instance: str | None = None
    client: str | None = None
    patient: str | None = None  # already hashed (or dropped) as configured
    cards: tuple[AuditCard, ...] = ()
    rules: tuple[AuditRule, ...] = ()
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def from_evaluation(evaluation: Evaluation) -> tuple[tuple[AuditCard, ...], tuple[AuditRule, ...]]:
    """The cards shown and every rule that fired, was suppressed or failed."""
    cards = tuple(
        AuditCard(
            card_uuid=card.uuid or "",
            rule_id=rule_id,
            indicator=card.indicator,
            suggestions=tuple(s.uuid for s in card.suggestions if s.uuid),
        )
        for rule_id, card in evaluation.credited()  # one row per rule credited: counts go to each of them
    )
    rules: list[AuditRule] = []
    for verdict in evaluation.verdicts.values():
        if verdict.status == "fired":
            rules.append(AuditRule(verdict.rule_id, "fired"))
        elif verdict.status == "suppressed":
            rules.append(AuditRule(verdict.rule_id, "suppressed", ",".join(verdict.suppressed_by)[:500]))
        elif verdict.status == "error":
            rules.append(AuditRule(verdict.rule_id, "error", (verdict.error or "")[:500]))
    return cards, tuple(rules)


class PatientPseudonym:
    """How a patient id goes into the audit trail: HMAC-SHA256 under a secret key, as is, or not at all."""

    def __init__(self, mode: PatientMode, key: bytes | None) -> None:
        if mode == "hash" and not key:
            raise ValueError("hashing patient ids needs a key")
        self.mode = mode
        self._key = key or b""

    def __call__(self, patient_id: str | None) -> str | None:
        if patient_id is None or self.mode == "none":
            return None
        if self.mode == "plain":
            return patient_id
        return "hmac-sha256:" + hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()


class AuditWriter:
    """Batches audit records and writes them in the background; see the module docstring."""

    def __init__(
        self,
        database: Database,
        metrics: Metrics,
        *,
        interval_s: float = 0.5,
        batch_size: int = 200,
        max_pending: int = 20_000,
    ) -> None:
        self._database = database
        self._metrics = metrics
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._pending: list[AuditRecord] = []
        self._wake = asyncio.Event()
        self._flushed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def submit(self, record: AuditRecord) -> None:
        """Queue ``record``; returns at once unless the backlog is full, then waits for a flush."""
        while len(self._pending) >= self._max_pending and not self._closing:
            self._wake.set()
            async with self._flushed:
                await self._flushed.wait()
        self._pending.append(record)
        self._metrics.audit_pending.set(len(self._pending))
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    def rule_for_card(self, card_uuid: str) -> str | None:
        """The rule that owns ``card_uuid`` among records not yet written (the database knows the rest)."""
        for record in reversed(self._pending):
            for card in record.cards:
                if card.card_uuid == card_uuid:
                    return card.rule_id
        return None

    async def flush(self) -> bool:
        """Write everything pending now, at most ``MAX_WRITE`` records per transaction; False (records kept
        for the next try) if the database failed."""
        while self._pending:
            # Bounded: after an outage up to twice ``max_pending`` records wait, and one write of them all
            # would exceed the databases' limits on bound parameters (32,766) every time it was retried.
            batch, self._pending = self._pending[:MAX_WRITE], self._pending[MAX_WRITE:]
            try:
                await self._database.write_audit(batch)
            except Exception as exc:  # noqa: BLE001  # keep the records; the next flush retries them
                self._pending[:0] = batch
                self._metrics.audit_pending.set(len(self._pending))  # exact during an outage too
                self._metrics.audit_write_failures.inc()
                log.error(
                    "audit write failed; will retry", error=type(exc).__name__, pending=len(self._pending)
                )
                return False
            self._metrics.audit_written.inc(len(batch))
        self._metrics.audit_pending.set(len(self._pending))
        async with self._flushed:
            self._flushed.notify_all()
        return True

    async def _run(self) -> None:
        backoff = self._interval_s
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            self._wake.clear()
            ok = await self.flush()
            # after a failure: exponential back-off with jitter, so workers and replicas do not retry in step
            backoff = self._interval_s if ok else min(backoff * 2, 10.0) * random.uniform(0.5, 1.0)  # noqa: S311

    async def close(self, attempts: int = 5) -> None:
        """Stop the background task and write what is left (retrying a few times)."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
        for attempt in range(attempts):
            if await self.flush() and not self._pending:
                return
            await asyncio.sleep(0.2 * (attempt + 1))
        log.error("audit records could not be written at shutdown", lost=len(self._pending))
