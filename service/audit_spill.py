"""Audit records kept in local files while the database cannot take them.

When the audit backlog is full (the database is down, partitioned or slower than the traffic) the
:class:`~service.audit.AuditWriter` hands the oldest records to this folder instead of making hook calls
wait, and reads them back once the database writes again. The protocol, safe with several workers and
replicas sharing the folder and with a process killed at any point:

- a spill is written to ``<name>.jsonl.tmp``, fsynced, then renamed to ``<name>.jsonl``: a reader never
  sees half a file;
- a process recovering a file first *claims* it by renaming it to ``<name>.jsonl.<token>.claimed``
  (``token`` is the process's own): a rename succeeds for one process only;
- after its records are written the file is deleted; if the database fails again it is renamed back;
- a claimed file or a ``.tmp`` not touched for ``STALE_S`` belongs to a process that died: anyone may claim
  it (only complete lines are read back).

Writing a record twice is harmless: the audit tables skip a call already written (its ``call_id``). The
folder is capped at ``max_bytes`` (exactly within a process; workers sharing the folder may each add one
spill past it); beyond it records are dropped, counted and logged, never blocking.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from service.audit import AuditCard, AuditRecord, AuditRule

log = structlog.get_logger("lumbar.audit")
STALE_S = 300.0  # a claim or a half-written spill untouched this long belongs to a dead process
READY = ".jsonl"
TEMPORARY = ".jsonl.tmp"
CLAIMED = ".claimed"


def encode(record: AuditRecord) -> bytes:
    return orjson.dumps(
        {
            "call_id": record.call_id,
            "created_at": record.created_at.isoformat(),
            "service_id": record.service_id,
            "hook": record.hook,
            "status": record.status,
            "latency_ms": record.latency_ms,
            "ruleset_version": record.ruleset_version,
            "hook_instance": record.hook_instance,
            "client": record.client,
            "patient": record.patient,
            "cards": [[c.card_uuid, c.rule_id, c.indicator, list(c.suggestions)] for c in record.cards],
            "rules": [[r.rule_id, r.outcome, r.detail] for r in record.rules],
        }
    )


def decode(line: bytes) -> AuditRecord:
    data: dict[str, Any] = orjson.loads(line)
    return AuditRecord(
        service_id=data["service_id"],
        hook=data["hook"],
        status=data["status"],
        latency_ms=data["latency_ms"],
        ruleset_version=data["ruleset_version"],
        hook_instance=data["hook_instance"],
        client=data["client"],
        patient=data["patient"],
        cards=tuple(AuditCard(uuid, rule, indicator, tuple(s)) for uuid, rule, indicator, s in data["cards"]),
        rules=tuple(AuditRule(rule, outcome, detail) for rule, outcome, detail in data["rules"]),
        call_id=data["call_id"],
        created_at=datetime.fromisoformat(data["created_at"]),
    )


class AuditSpill:
    """One folder of spilled audit records; the methods do blocking file I/O (run them in a thread)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._token = secrets.token_hex(6)
        self._writing = threading.Lock()  # one spill at a time in this process: the size check holds

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Keep ``records`` in a new file; raises OSError when the folder is full or cannot be written."""
        data = b"".join(encode(record) + b"\n" for record in records)
        with self._writing:
            self._write(data)

    def _write(self, data: bytes) -> None:
        self.prepare()
        used = self.size()
        if used + len(data) > self.max_bytes:
            raise OSError(f"audit spill folder full ({used} of {self.max_bytes} bytes used)")
        name = f"audit-{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}"
        temporary = self.folder / (name + TEMPORARY)
        # 0600: the records hold pseudonymised patient ids and client names, like the audit tables
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.rename(self.folder / (name + READY))
        self._sync_folder()

    def prepare(self) -> None:
        """Make the folder (owner-only); raises OSError when it cannot be made or written."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write to {self.folder}")

    def size(self) -> int:
        """Bytes held in the folder (every spill, claimed or not)."""
        total = 0
        for entry in self._entries():
            with contextlib.suppress(FileNotFoundError):  # claimed and deleted meanwhile
                total += entry.stat().st_size
        return total

    def waiting(self) -> int:
        """Files not yet written back (claimed ones included)."""
        return len(self._entries())

    def claim(self) -> Path | None:
        """Take one file to write back (the oldest first), or None when there is nothing for this process."""
        now = time.time()
        for entry in sorted(self._entries(), key=lambda path: path.name):
            name = entry.name
            if name.endswith((CLAIMED, TEMPORARY)):
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat().st_mtime < STALE_S:
                        continue  # another live process holds it, or is still writing it
                base = name[: name.index(READY) + len(READY)]
            else:
                base = name
            target = self.folder / f"{base}.{self._token}{CLAIMED}"
            try:
                entry.rename(target)  # one process wins the rename
            except FileNotFoundError:
                continue
            os.utime(target)  # the claim is fresh: no one takes it as stale while it is written
            return target
        return None

    def read(self, claimed: Path) -> tuple[list[AuditRecord], int]:
        """The records of a claimed file and the number of lines that could not be read (a torn last line
        of a spill cut short by a crash)."""
        records: list[AuditRecord] = []
        unreadable = 0
        for line in claimed.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                records.append(decode(line))
            except (ValueError, KeyError, TypeError):
                unreadable += 1
        return records, unreadable

    def release(self, claimed: Path) -> None:
        """Give a claimed file back (its records could not be written now)."""
        name = claimed.name
        with contextlib.suppress(FileNotFoundError):
            claimed.rename(self.folder / name[: name.index(READY) + len(READY)])

    def done(self, claimed: Path) -> None:
        claimed.unlink(missing_ok=True)

    def _entries(self) -> list[Path]:
        try:
            return [entry for entry in self.folder.iterdir() if _is_spill(entry.name)]
        except FileNotFoundError:
            return []

    def _sync_folder(self) -> None:
        descriptor = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _is_spill(name: str) -> bool:
    return name.startswith("audit-") and (name.endswith((READY, TEMPORARY, CLAIMED)))
