"""Replay refusal through a database outage and a partition: calls are served, replays to the same worker
are still refused, and the ids remembered meanwhile reach the shared store when it answers again."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.metrics import Metrics
from service.replay import ReplayGuard
from service.storage.database import Database, within

pytestmark = pytest.mark.anyio
LATER = int(time.time()) + 300


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: a network partition."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(50)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.mark.parametrize("outage", ["refused", "partition"])
async def test_calls_are_served_through_an_outage_and_replays_to_this_worker_refused(
    outage: str, silent_server: int
) -> None:
    port = 1 if outage == "refused" else silent_server
    database = Database(f"postgresql+asyncpg://lumbar@127.0.0.1:{port}/lumbar")
    metrics = Metrics()
    guard = ReplayGuard(database, metrics, timeout_s=0.5)
    try:
        started = time.monotonic()
        assert await guard.remember("https://ehr.example.org", "jti-1", LATER) is True  # served
        assert time.monotonic() - started < 2.0  # not held by the partition
        assert await guard.remember("https://ehr.example.org", "jti-1", LATER) is False  # the replay
        assert await guard.remember("https://ehr.example.org", "jti-2", LATER) is True
    finally:
        await database.close()
    assert b"lumbar_replay_store_fallbacks_total 2.0" in metrics.render()


async def test_ids_remembered_during_the_outage_reach_the_store_when_it_is_back(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/replay.db")
    await database.migrate()
    metrics = Metrics()
    guard = ReplayGuard(database, metrics, retry_after_s=0)  # ask the store again at once
    real = database.remember_jtis

    async def down(*_: object) -> set[tuple[str, str]]:
        raise ConnectionRefusedError("the database is down")

    try:
        database.remember_jtis = down  # type: ignore[method-assign]
        assert await guard.remember("iss", "during", LATER) is True
        assert await real([("iss", "elsewhere", LATER)]) == {("iss", "elsewhere")}  # another worker took it
        guard._remember_locally("iss", "elsewhere", LATER)  # ...and so did this one, during the outage
        database.remember_jtis = real  # type: ignore[method-assign]
        assert await guard.remember("iss", "after", LATER) is True  # the store answers: write-back...
        assert guard.writing is not None
        await guard.writing  # ...in the background, not on the hook call's path
        assert await database.remember_jti("iss", "during", LATER) is False  # now known to every worker
    finally:
        await database.close()
    assert b"lumbar_replays_found_late_total 1.0" in metrics.render()


async def test_after_a_failure_the_store_is_left_alone_for_a_while(tmp_path: Path) -> None:
    """In a partition each call would wait the whole timeout for the store: after one failure the calls go
    by this worker's memory for ``retry_after_s``, then the store is asked again."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/replay.db")
    await database.migrate()
    guard = ReplayGuard(database, Metrics(), timeout_s=0.5, retry_after_s=0.3)
    real = database.remember_jtis
    asked: list[str] = []

    async def hangs(ids: list[tuple[str, str, int]]) -> set[tuple[str, str]]:
        asked.extend(jti for _, jti, _ in ids)
        await asyncio.sleep(10)
        return set()

    try:
        database.remember_jtis = hangs  # type: ignore[method-assign]
        started = time.monotonic()
        for n in range(20):
            assert await guard.remember("iss", f"j{n}", LATER) is True
        assert asked == ["j0"]  # one call waited for the store, 19 did not
        assert time.monotonic() - started < 1.5
        assert await guard.remember("iss", "j3", LATER) is False  # still refused in this worker
        await asyncio.sleep(0.35)
        database.remember_jtis = real  # type: ignore[method-assign]
        assert await guard.remember("iss", "later", LATER) is True  # asked again, and answered
        assert guard.writing is not None
        await guard.writing
        assert (
            await database.remember_jti("iss", "j7", LATER) is False
        )  # the partition's ids reached the store
    finally:
        await database.close()


async def test_readyz_answers_within_its_bound_during_a_partition(silent_server: int) -> None:
    database = Database(f"postgresql+asyncpg://lumbar@127.0.0.1:{silent_server}/lumbar")
    try:
        started = time.monotonic()
        assert await database.ping(timeout_s=0.5) is False
        assert time.monotonic() - started < 1.5
    finally:
        await asyncio.wait_for(database.close(), 5)


async def test_a_bounded_wait_does_not_wait_for_a_slow_cancellation() -> None:
    """asyncio.wait_for waits for the cancelled operation to wind down; a driver in a partition took as
    long again (a 2 s /readyz answered after 4 s). ``within`` gives up on time."""
    wound_down = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(1.0)  # closing a connection nobody answers
            wound_down.set()
            raise

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(stubborn(), 0.2)
    assert time.monotonic() - started < 0.5
    assert not wound_down.is_set()
    await asyncio.wait_for(wound_down.wait(), 3)  # it still ends, on its own
    assert await within(asyncio.sleep(0, result="answer"), 1) == "answer"


async def test_concurrent_checks_share_one_write_and_a_replay_in_the_same_batch_is_refused(
    database_url: str,
) -> None:
    """A group commit: 50 calls at once cost a handful of statements, not 50 transactions; the same id
    twice among them is accepted once; ids seen before are refused; across two guards (two workers) on one
    database an id is accepted once."""
    database = Database(database_url)
    await database.migrate()
    statements: list[int] = []
    real = database.remember_jtis

    async def counted(ids: list[tuple[str, str, int]]) -> set[tuple[str, str]]:
        statements.append(len(ids))
        return await real(ids)

    database.remember_jtis = counted  # type: ignore[method-assign]
    one, two = ReplayGuard(database, Metrics()), ReplayGuard(database, Metrics())
    try:
        ids = [f"j{n}" for n in range(48)] + ["j0", "j1"]  # two replays among them
        answers = await asyncio.gather(*(one.remember("iss", jti, LATER) for jti in ids))
        assert sum(answers) == 48
        assert answers[48:] == [False, False]
        assert len(statements) <= 3 and sum(statements) == 50
        again = await asyncio.gather(
            *(guard.remember("iss", "shared", LATER) for guard in (one, two, one, two))
        )
        assert sorted(again) == [False, False, False, True]  # one worker accepted it, three refused
        assert await two.remember("iss", "j5", LATER) is False  # seen by the other worker's batch
    finally:
        await database.close()
