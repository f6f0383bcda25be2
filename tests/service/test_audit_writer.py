"""The audit writer: batching, bounded transactions, and what happens while the database cannot write.

The database is real (SQLite, and PostgreSQL when configured); an outage is a real database whose audit
writes are refused while ``down`` is set. Counts are exact: a record lost, duplicated or never written back
from the spill folder fails.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from service.audit import MAX_WRITE, AuditRecord, AuditWriter
from service.audit_spill import STALE_S, AuditSpill, decode, encode
from service.metrics import Metrics
from service.storage.database import Database
from service.storage.tables import audit_call, audit_card
from tests.service.test_storage import _count, call

pytestmark = pytest.mark.anyio


class Outage(Database):
    """A real database whose audit writes fail while ``down`` is set."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = False
        self.sizes: list[int] = []

    async def write_audit(self, records: Sequence[AuditRecord]) -> None:
        if self.down:
            raise ConnectionRefusedError("the database is down")
        self.sizes.append(len(records))
        await super().write_audit(records)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Outage]:
    database = Outage(database_url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


def counter(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return value or 0.0


async def eventually(check: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def records(n: int, prefix: str = "c") -> list[AuditRecord]:
    return [call((f"{prefix}{i}", "rf-cauda-equina"), fired=["rf-cauda-equina"]) for i in range(n)]


def test_a_record_survives_the_spill_file_unchanged() -> None:
    record = call(("card-1", "rf-cauda-equina"), ("card-2", "test-mri"), fired=["rf-cauda-equina"])
    record.rules += (record.rules[0].__class__("dx-x", "error", "ValueError: boom"),)
    bare = AuditRecord("svc", "order-sign", 400, 1.5, "v2")  # every optional field empty
    assert decode(encode(record)) == record
    assert decode(encode(bare)) == bare


def test_submitting_never_waits() -> None:
    assert not inspect.iscoroutinefunction(AuditWriter.submit)  # a hook call cannot be made to wait on it


async def test_the_writer_batches_and_flushes_on_close(db: Outage) -> None:
    writer = AuditWriter(db, Metrics(), interval_s=60, batch_size=1000)
    writer.start()
    for record in records(25):
        writer.submit(record)
    assert await _count(db, audit_call) == 0  # nothing written on the request path
    assert writer.rule_for_card("c7") == "rf-cauda-equina"
    await writer.close()
    assert await _count(db, audit_call) == 25


async def test_a_large_backlog_is_written_in_bounded_transactions(db: Outage) -> None:
    writer = AuditWriter(db, Metrics(), interval_s=60, batch_size=100_000, max_pending=100_000)
    for record in records(MAX_WRITE * 2 + 1):
        writer.submit(record)
    assert await writer.flush()
    assert db.sizes == [MAX_WRITE, MAX_WRITE, 1]
    assert await _count(db, audit_call) == MAX_WRITE * 2 + 1


async def test_a_full_batch_is_written_without_waiting_for_the_interval(db: Outage) -> None:
    writer = AuditWriter(db, Metrics(), interval_s=60, batch_size=10)
    writer.start()
    for record in records(10):
        writer.submit(record)
    await eventually(lambda: _wrote(db, 10))
    await writer.close()


async def _wrote(db: Database, n: int) -> bool:
    return await _count(db, audit_call) == n


async def test_the_pending_count_is_exact_while_the_database_is_down(db: Outage) -> None:
    """lumbar_audit_pending once kept the count from before a failed write: a first batch is written, then
    the database goes down; the gauge must say what still waits."""
    metrics = Metrics()
    writer = AuditWriter(db, metrics, batch_size=10**6, max_pending=10**6)
    for record in records(MAX_WRITE + 50):
        writer.submit(record)
    real_write = db.write_audit

    async def first_then_down(batch: Sequence[AuditRecord]) -> None:
        await real_write(batch)
        db.down = True

    db.write_audit = first_then_down  # type: ignore[method-assign]
    assert await writer.flush() is False
    assert counter(metrics, "lumbar_audit_pending") == 50


async def test_an_outage_spills_the_backlog_and_writes_it_back(db: Outage, tmp_path: Path) -> None:
    """The backlog is full while the database is down: hook calls go on at once, the records wait in files,
    and every one of them is written exactly once when the database returns."""
    metrics = Metrics()
    spill = AuditSpill(tmp_path / "spill", 10_000_000)
    writer = AuditWriter(db, metrics, spill=spill, interval_s=0.02, batch_size=50, max_pending=100)
    writer.start()
    db.down = True
    submitted_in = 0.0
    for n, record in enumerate(records(1_050), start=1):
        started = time.perf_counter()
        writer.submit(record)
        submitted_in += time.perf_counter() - started
        if n % 100 == 0:  # between bursts the spill catches up, as it does between real calls
            await eventually(lambda n=n: _spilled(metrics, n))  # type: ignore[misc]
    assert spill.waiting() >= 1
    assert counter(metrics, "lumbar_audit_pending") == 50  # the rest waits in memory
    assert counter(metrics, "lumbar_audit_write_failures_total") >= 1
    assert submitted_in < 0.5  # 1,050 calls did not wait for the database (~5 ms when it passes)
    db.down = False
    await eventually(lambda: _wrote(db, 1_050))
    await eventually(lambda: _no_files(spill))
    await writer.close()
    assert await _count(db, audit_call) == 1_050
    assert await _count(db, audit_card) == 1_050
    assert counter(metrics, "lumbar_audit_recovered_total") == counter(metrics, "lumbar_audit_spilled_total")
    assert counter(metrics, "lumbar_audit_dropped_total") == 0


async def test_a_burst_faster_than_the_spill_is_bounded_and_counted(db: Outage, tmp_path: Path) -> None:
    """1,050 records with no chance for the spill to run: two spills in flight, the rest dropped and counted,
    memory bounded by the backlog, and every record accounted for."""
    metrics = Metrics()
    writer = AuditWriter(db, metrics, spill=AuditSpill(tmp_path, 10_000_000), interval_s=60, max_pending=100)
    db.down = True
    for record in records(1_050):
        writer.submit(record)
    assert counter(metrics, "lumbar_audit_dropped_total") == 800
    assert counter(metrics, "lumbar_audit_pending") == 50
    await writer.close()
    assert counter(metrics, "lumbar_audit_spilled_total") == 250  # the two in flight, and the 50 at the stop
    assert counter(metrics, "lumbar_audit_dropped_total") == 800


async def _spilled(metrics: Metrics, n: int) -> bool:
    return counter(metrics, "lumbar_audit_spilled_total") >= n


async def _no_files(spill: AuditSpill) -> bool:
    return spill.waiting() == 0


async def test_a_graceful_stop_during_an_outage_spills_and_the_next_start_writes_back(
    db: Outage, tmp_path: Path
) -> None:
    folder = tmp_path / "spill"
    metrics = Metrics()
    writer = AuditWriter(db, metrics, spill=AuditSpill(folder, 10_000_000), interval_s=60)
    writer.start()
    db.down = True
    for record in records(3_000):
        writer.submit(record)
    await writer.close()  # SIGTERM during the outage: nothing written, nothing lost
    assert await _count(db, audit_call) == 0
    assert counter(metrics, "lumbar_audit_spilled_total") == 3_000
    assert counter(metrics, "lumbar_audit_dropped_total") == 0
    db.down = False
    again = Metrics()
    restarted = AuditWriter(db, again, spill=AuditSpill(folder, 10_000_000), interval_s=0.02)
    restarted.start()
    await eventually(lambda: _wrote(db, 3_000))
    await restarted.close()
    assert counter(again, "lumbar_audit_recovered_total") == 3_000
    assert AuditSpill(folder, 1).waiting() == 0


async def test_without_a_spill_folder_the_backlog_is_dropped_and_counted(db: Outage) -> None:
    metrics = Metrics()
    writer = AuditWriter(db, metrics, interval_s=60, max_pending=100)
    db.down = True
    for record in records(250):
        writer.submit(record)
    assert counter(metrics, "lumbar_audit_dropped_total") == 200  # two full backlogs
    assert counter(metrics, "lumbar_audit_pending") == 50
    await writer.close()
    assert counter(metrics, "lumbar_audit_dropped_total") == 250  # the stop could not write them either


async def test_a_full_spill_folder_drops_and_counts(db: Outage, tmp_path: Path) -> None:
    metrics = Metrics()
    spill = AuditSpill(tmp_path / "spill", 20_000)  # room for one spill of 40 records, not two
    writer = AuditWriter(db, metrics, spill=spill, interval_s=60, max_pending=40)
    db.down = True
    for record in records(80):
        writer.submit(record)
        await asyncio.sleep(0)  # let each spill run before the next backlog fills
    await eventually(lambda: _accounted(metrics, 80))
    assert counter(metrics, "lumbar_audit_spilled_total") == 40
    assert counter(metrics, "lumbar_audit_dropped_total") == 40
    assert spill.size() <= 20_000


async def _accounted(metrics: Metrics, n: int) -> bool:
    spilled = counter(metrics, "lumbar_audit_spilled_total")
    return spilled + counter(metrics, "lumbar_audit_dropped_total") == n


def test_a_spill_is_claimed_by_one_process_and_a_dead_claim_by_another(tmp_path: Path) -> None:
    first, second = AuditSpill(tmp_path, 10_000_000), AuditSpill(tmp_path, 10_000_000)
    first.write(records(3))
    claimed = first.claim()
    assert claimed is not None
    assert second.claim() is None  # the other process's claim is fresh
    old = time.time() - STALE_S - 1
    os.utime(claimed, (old, old))  # its owner died long ago
    taken = second.claim()
    assert taken is not None
    assert [r.call_id for r in second.read(taken)[0]] == [r.call_id for r in first.read(taken)[0]]
    second.release(taken)  # the database failed: back to the folder for anyone
    assert [p.name.endswith(".jsonl") for p in tmp_path.iterdir()] == [True]
    again = first.claim()
    assert again is not None
    first.done(again)
    assert first.waiting() == 0


def test_a_spill_cut_short_by_a_crash_gives_back_its_complete_lines(tmp_path: Path) -> None:
    spill = AuditSpill(tmp_path, 10_000_000)
    kept = records(2)
    torn = tmp_path / "audit-1-1-ab.jsonl.tmp"  # the process died while writing it
    torn.write_bytes(encode(kept[0]) + b"\n" + encode(kept[1]) + b"\n" + encode(kept[0])[:30])
    assert spill.claim() is None  # a recent .tmp may still be being written
    old = time.time() - STALE_S - 1
    os.utime(torn, (old, old))
    claimed = spill.claim()
    assert claimed is not None
    assert spill.read(claimed) == (kept, 1)


def test_spill_files_are_private_to_the_service(tmp_path: Path) -> None:
    spill = AuditSpill(tmp_path / "spill", 10_000_000)
    spill.write(records(1))
    (written,) = (tmp_path / "spill").iterdir()
    assert written.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "spill").stat().st_mode & 0o777 == 0o700


async def test_a_file_written_back_twice_is_stored_once(db: Outage, tmp_path: Path) -> None:
    """Two processes may both write back a claim thought dead: the audit tables skip a call already
    written."""
    batch = records(5)
    await db.write_audit(batch)
    await db.write_audit(batch)
    assert await _count(db, audit_call) == 5
