"""The audit trail of hook calls, written off the request path.

A hook call hands its record to the :class:`AuditWriter` and answers at once; a background task writes the
pending records (at most ``MAX_WRITE`` per transaction) every ``interval_s`` or as soon as ``batch_size``
are waiting. A failed write keeps the records and retries
with exponential back-off and jitter. A hook call never waits for the audit trail: when ``max_pending``
records are waiting (the database is down, partitioned or slower than the traffic) they go to a local spill
folder (:mod:`service.audit_spill`) and are written back once the database takes writes again; without a
spill folder, or with a full one, they are dropped, counted (``lumbar_audit_dropped_total``) and logged.
A graceful stop writes what is pending, or spills it when the database fails. (A SIGKILL loses at most the
records of the last ``interval_s``; feedback, which the client is told was stored, is committed before the
answer and never depends on this.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import structlog

from rules.engine import Evaluation
from service.metrics import Metrics
from service.storage.database import Database

if TYPE_CHECKING:
    from service.audit_spill import AuditSpill

log = structlog.get_logger("lumbar.audit")
PatientMode = Literal["hash", "plain", "none"]
MAX_WRITE = 5_000  # records per audit transaction
RESCAN_S = 30.0  # how often a writer looks for spilled files it did not write itself (a dead worker's)
DROP_LOG_EVERY_S = 10.0


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
        spill: AuditSpill | None = None,
        interval_s: float = 0.5,
        batch_size: int = 200,
        max_pending: int = 20_000,
    ) -> None:
        self._database = database
        self._metrics = metrics
        self._spill = spill
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._pending: list[AuditRecord] = []
        self._spilling: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._recover_due = spill is not None  # an earlier run, or a worker that died, may have left files
        self._next_scan = 0.0
        self._last_drop_log = -math.inf

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def submit(self, record: AuditRecord) -> None:
        """Queue ``record``; never waits. A full backlog goes to the spill folder, or is dropped and counted
        when there is none (or it is full, or already busy with two spills)."""
        self._pending.append(record)
        if len(self._pending) >= self._max_pending:
            batch = self._pending[:]  # a copy: a flush in progress holds the list itself
            self._pending.clear()
            if self._spill is not None and len(self._spilling) < 2:
                task = asyncio.create_task(self._spill_out(self._spill, batch), name="audit-spill")
                self._spilling.add(task)
                task.add_done_callback(self._spilling.discard)
            else:
                self._drop(len(batch), "audit backlog full and no spill folder to take it")
        self._metrics.audit_pending.set(len(self._pending))
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    async def status(self) -> dict[str, object]:
        """For operators (/readyz with the admin token): what waits in memory and in the spill folder."""
        out: dict[str, object] = {"pending": len(self._pending)}
        if self._spill is not None:
            loop = asyncio.get_running_loop()
            out["spill"] = {
                "folder_bytes": await loop.run_in_executor(None, self._spill.size),
                "files": await loop.run_in_executor(None, self._spill.waiting),
                "max_bytes": self._spill.max_bytes,
            }
        return out

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
        ok = await self._write(self._pending)
        self._metrics.audit_pending.set(len(self._pending))  # exact during an outage too
        return ok

    async def _write(self, records: list[AuditRecord]) -> bool:
        """Write ``records`` in bounded transactions, removing each batch written from the list."""
        while records:
            # Bounded: one write of a long backlog would exceed the databases' limits on bound parameters
            # (32,766) every time it was retried.
            batch = records[:MAX_WRITE]
            del records[:MAX_WRITE]
            try:
                await self._database.write_audit(batch)
            except Exception as exc:  # noqa: BLE001  # keep the records; the next flush retries them
                records[:0] = batch
                self._metrics.audit_write_failures.inc()
                log.error("audit write failed; will retry", error=type(exc).__name__, pending=len(records))
                return False
            self._metrics.audit_written.inc(len(batch))
        return True

    async def _spill_out(self, spill: AuditSpill, batch: list[AuditRecord]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, spill.write, batch)
        except OSError as exc:
            self._drop(len(batch), f"audit spill failed: {exc}")
            return
        self._metrics.audit_spilled.inc(len(batch))
        self._recover_due = True
        log.warning("audit backlog spilled to a local file", records=len(batch), folder=str(spill.folder))

    async def _recover(self, spill: AuditSpill) -> bool:
        """Write back one spilled file; False if the database failed (the file is given back)."""
        loop = asyncio.get_running_loop()
        claimed = await loop.run_in_executor(None, spill.claim)
        if claimed is None:
            self._recover_due = False
            self._next_scan = loop.time() + RESCAN_S
            return True
        records, unreadable = await loop.run_in_executor(None, spill.read, claimed)
        if unreadable:
            self._drop(unreadable, f"unreadable lines in {claimed.name}")
        count = len(records)
        if not await self._write(records):
            await loop.run_in_executor(None, spill.release, claimed)
            return False
        await loop.run_in_executor(None, spill.done, claimed)
        self._metrics.audit_recovered.inc(count)
        log.info("spilled audit records written", records=count, file=claimed.name)
        self._wake.set()  # there may be more files
        return True

    def _drop(self, count: int, reason: str) -> None:
        self._metrics.audit_dropped.inc(count)
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:  # loud, but not a log line per call in an outage
            self._last_drop_log = now
            log.error("audit records dropped", records=count, reason=reason)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._interval_s
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            self._wake.clear()
            ok = await self.flush()
            if ok and self._spill is not None and (self._recover_due or loop.time() >= self._next_scan):
                ok = await self._recover(self._spill)
            # after a failure: exponential back-off with jitter, so workers and replicas do not retry in step
            backoff = self._interval_s if ok else min(backoff * 2, 10.0) * random.uniform(0.5, 1.0)  # noqa: S311

    async def close(self, attempts: int = 2) -> None:
        """Stop the background task and write what is left (retrying once), else spill it to a file."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
        if self._spilling:
            await asyncio.gather(*self._spilling)
        for attempt in range(attempts):
            if await self.flush():
                return
            if attempt + 1 < attempts:
                await asyncio.sleep(0.2)
        if self._spill is not None:
            batch = self._pending[:]
            self._pending.clear()
            await self._spill_out(self._spill, batch)
            self._metrics.audit_pending.set(0)
            return
        self._drop(len(self._pending), "the database failed at shutdown and there is no spill folder")
