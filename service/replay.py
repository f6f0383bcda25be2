"""Replay refusal that does not take decision support down with the database.

A client JWT id (``jti``) is remembered in the shared store (the database), so a replay is refused by every
worker and replica. When the store does not answer within ``TIMEOUT_S`` (an outage, a partition), the call
is still served: the id is remembered in this worker only, which still refuses a replay to this worker,
logged and counted (``lumbar_replay_store_fallbacks``). For ``RETRY_AFTER_S`` after a failure the store is
not asked at all, so that during a partition each call does not wait ``TIMEOUT_S`` for it. Once the store
answers again the ids remembered meanwhile are written to it; one it had already seen was a replay to
another worker during the outage, and is logged and counted as such (``lumbar_replays_found_late``). The
trade-off is in docs/security.md.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from service.metrics import Metrics
from service.storage.database import Database, within

TIMEOUT_S = 2.0  # the longest a hook call waits for the replay store
WRITE_BACK_CHUNK = 1_000  # ids per statement when the outage's ids are written back
RETRY_AFTER_S = 5.0  # after the store failed, how long calls go by this worker's memory without asking it
log = structlog.get_logger("lumbar.replay")


class ReplayGuard:
    def __init__(
        self,
        database: Database,
        metrics: Metrics,
        timeout_s: float = TIMEOUT_S,
        retry_after_s: float = RETRY_AFTER_S,
    ) -> None:
        self.database = database
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._retry_at = 0.0  # monotonic time before which the store is not asked
        self._queue: list[tuple[str, str, int, asyncio.Future[bool]]] = []  # ids waiting for the next write
        self._writer: asyncio.Task[None] | None = None
        self.local: dict[tuple[str, str], int] = {}  # ids accepted while the store could not answer
        self._resync: list[tuple[str, str, int]] = []
        self.writing: asyncio.Task[None] | None = None  # the write-back, off the hook call's path

    async def remember(self, issuer: str, jti: str, expires_at: int) -> bool:
        """Record a client JWT id; False for a replay (seen by the store, or by this worker meanwhile)."""
        key = (issuer, jti)
        if key in self.local:
            return False
        if time.monotonic() < self._retry_at:  # it failed a moment ago: do not make this call wait for it
            self._remember_locally(issuer, jti, expires_at)
            self.metrics.replay_fallbacks.inc()
            return True
        try:
            fresh = await self._store(issuer, jti, expires_at)
        except Exception as exc:  # noqa: BLE001  # the store is down or partitioned: serve, guarded locally
            self._retry_at = time.monotonic() + self.retry_after_s
            self._remember_locally(issuer, jti, expires_at)
            self.metrics.replay_fallbacks.inc()
            log.warning(
                "replay store unavailable: checked in this worker only",
                error=type(exc).__name__,
                pending=len(self._resync),
                retry_in_s=self.retry_after_s,
            )
            return True
        if self._resync and (self.writing is None or self.writing.done()):
            self.writing = asyncio.create_task(self._write_back(), name="replay-write-back")
        return fresh

    async def _store(self, issuer: str, jti: str, expires_at: int) -> bool:
        """Whether the store had not seen this id. Calls arriving while a write is in flight are written
        together in the next one (one statement for all of them: a group commit), so under load the store
        costs a fraction of a transaction per call; a replay is still decided by the shared store."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((issuer, jti, expires_at, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queue(), name="replay-store")
        return await future

    async def _write_queue(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                fresh = await within(
                    self.database.remember_jtis([(i, j, e) for i, j, e, _ in batch]), self.timeout_s
                )
            except Exception as exc:  # noqa: BLE001  # every caller of this batch, and those queued, fall back
                self._retry_at = time.monotonic() + self.retry_after_s
                batch, self._queue = batch + self._queue, []
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for issuer, jti, _, future in batch:
                first = (issuer, jti) in fresh
                fresh.discard((issuer, jti))  # the same id twice in one batch: only the first is fresh
                if not future.done():
                    future.set_result(first)

    def _remember_locally(self, issuer: str, jti: str, expires_at: int) -> None:
        now = int(time.time())
        if len(self.local) > 100_000 or len(self.local) % 1000 == 0:  # keep it to the ids still valid
            self.local = {k: e for k, e in self.local.items() if e >= now}
        self.local[(issuer, jti)] = expires_at
        self._resync.append((issuer, jti, expires_at))

    async def _write_back(self) -> None:
        """The ids remembered during the outage, into the store (in chunks); one it knew was replayed
        elsewhere."""
        pending, self._resync = self._resync, []
        for start in range(0, len(pending), WRITE_BACK_CHUNK):
            chunk = pending[start : start + WRITE_BACK_CHUNK]
            try:
                fresh = await within(self.database.remember_jtis(chunk), self.timeout_s)
            except Exception:  # noqa: BLE001  # down again: keep the rest for the next time
                self._resync = pending[start:] + self._resync
                return
            for issuer, jti, _ in chunk:
                if (issuer, jti) not in fresh:
                    self.metrics.replays_found_late.inc()
                    log.error(
                        "a token was replayed to another worker while the replay store was down",
                        issuer=issuer,
                    )
        log.info("replay store back: ids remembered during the outage written", count=len(pending))
