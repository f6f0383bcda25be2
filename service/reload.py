"""Hot reload of the rule catalogue while the service keeps answering.

Each worker watches ``LUMBAR_RULES_DIR`` itself (the directory, not its files: container config maps swap a
symlink). On a change the whole catalogue is loaded, validated and its embedded tests run, in a thread; a
valid one whose tests pass replaces the current ``Catalogue`` in a single assignment, so a request sees the
old rule set or the new one, never a mix. Otherwise the last good rule set keeps serving; every error is
logged as ``path:line:col: error: ...``, every failing test as ``path:line: FAIL rule :: name: why``, and
both are shown on ``/readyz`` and in the metrics (``lumbar_rules_reload_failing``).

File-system events can be lost (a change made before the watcher started, a full inotify queue, network
file systems), so every worker also compares a cheap fingerprint of the directory (names, sizes,
modification times) every ``RECONCILE_S`` seconds and reloads when it differs from the one last loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog
from watchfiles import awatch

from rules.engine import RuleSet, RuleSetError
from service import collector
from service.catalogue import RuleTestsFailed, build_catalogue, load_tested
from service.state import AppState

log = structlog.get_logger("lumbar.reload")
RECONCILE_S = 3.0  # the bound on how late a change missed by the file-system watcher is picked up


QUIET_S = 0.25  # a catalogue is read only once no file under it has changed for this long
ATTEMPTS = 5  # reads of a catalogue that keeps changing under the reader, before giving up until the next


def catalogue_fingerprint(directory: Path) -> str:
    """A digest of every file's relative path, size and modification time under ``directory``."""
    return _scan(directory)[0]


def _scan(directory: Path) -> tuple[str, float]:
    """The fingerprint, and when the newest file under ``directory`` was last modified (epoch seconds)."""
    digest = hashlib.blake2b(digest_size=16)
    newest = 0.0
    try:
        for path in sorted(directory.rglob("*")):
            with contextlib.suppress(OSError):  # a file renamed away between listing and stat
                info = path.stat()
                newest = max(newest, info.st_mtime)
                digest.update(f"{path.relative_to(directory)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    except OSError as exc:  # the directory itself is gone: a distinct fingerprint, so it gets retried
        digest.update(f"unreadable: {exc}".encode())
    return digest.hexdigest(), newest


async def _quiet_snapshot(directory: Path) -> str:
    """Wait until no file has changed for ``QUIET_S`` (an editor or a copy still writing; at most 5 s, and a
    modification time in the future counts as quiet), then fingerprint."""
    give_up = time.monotonic() + 5.0
    while True:
        fingerprint, newest = await asyncio.to_thread(_scan, directory)
        wait = newest + QUIET_S - time.time()
        if wait <= 0 or wait > QUIET_S or time.monotonic() > give_up:
            return fingerprint
        await asyncio.sleep(wait)


async def reload_rules(state: AppState, directory: Path) -> bool:
    """Load, validate and swap in the catalogue at ``directory``; False (and the old one kept) if invalid."""
    async with state.reload.lock:  # the watcher and the periodic check never load at the same time
        return await _reload(state, directory)


async def _reload(state: AppState, directory: Path) -> bool:
    """A consistent snapshot: read once the files have been quiet for ``QUIET_S``, and swapped in only if
    they are still the same after reading (a write during the read means reading again)."""
    status = state.reload
    for _ in range(ATTEMPTS):
        status.fingerprint = await _quiet_snapshot(directory)
        status.at = datetime.now(UTC).isoformat(timespec="seconds")
        ruleset = await _load(state, directory)
        if await asyncio.to_thread(catalogue_fingerprint, directory) != status.fingerprint:
            log.info("rule files changed while being read: reading them again")
            continue
        if ruleset is None:
            return False
        _swap(state, ruleset)
        return True
    _rejected(state, [f"{directory}: the rule files kept changing while being read"], "rule reload deferred")
    return False


async def _load(state: AppState, directory: Path) -> RuleSet | None:
    """The catalogue, loaded and self-tested; None (the problems recorded) when it cannot go live."""
    try:
        ruleset, _ = await asyncio.to_thread(load_tested, directory)  # never allows failing tests
    except RuleSetError as exc:
        _rejected(state, [d.render() for d in exc.diagnostics], "rule reload rejected")
        return None
    except RuleTestsFailed as exc:
        _rejected(state, list(exc.failures), "rule reload rejected: its own tests fail")
        return None
    except OSError as exc:  # the directory vanished mid-swap; the next event retries
        _rejected(state, [f"{directory}: {exc}"], "rule reload failed")
        return None
    return ruleset


def _swap(state: AppState, ruleset: RuleSet) -> None:
    status = state.reload
    status.ok, status.errors = True, []
    state.metrics.reload_failing.set(0)
    if ruleset.version == state.catalogue.ruleset.version:
        return
    previous = state.catalogue.ruleset.version
    state.catalogue = build_catalogue(ruleset)  # the one atomic swap
    status.reloads += 1
    state.metrics.reloads.labels("ok").inc()
    state.metrics.set_ruleset(ruleset.version, len(ruleset.rules))
    log.info("rules reloaded", version=ruleset.version, previous=previous, rules=len(ruleset.rules))
    # The old rule set is garbage now: let the collector see it, then park the new long-lived objects.
    collector.settle()


def _rejected(state: AppState, errors: list[str], event: str) -> None:
    """The last good rules keep serving; the errors go to /readyz, the metrics and the log."""
    state.reload.ok, state.reload.errors = False, errors
    state.metrics.reloads.labels("error").inc()
    state.metrics.reload_failing.set(1)
    state.metrics.reload_error_time.set_to_current_time()
    for error in errors:
        log.error(event, diagnostic=error)


async def watch_rules(state: AppState, directory: Path, stop: asyncio.Event) -> None:
    """Reload on every change under ``directory`` until ``stop`` is set."""
    async with asyncio.TaskGroup() as group:
        group.create_task(_follow_events(state, directory, stop))
        group.create_task(_reconcile(state, directory, stop))


async def _reconcile(state: AppState, directory: Path, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RECONCILE_S)
            return
        try:
            current = await asyncio.to_thread(catalogue_fingerprint, directory)
            if current != state.reload.fingerprint:
                log.info("rule change found by the periodic check")
                await reload_rules(state, directory)
        except Exception as exc:  # noqa: BLE001  # keep checking; a broken check must not stop the service
            log.error("rule reconcile failed", error=f"{type(exc).__name__}: {exc}")


async def _follow_events(state: AppState, directory: Path, stop: asyncio.Event) -> None:
    try:
        async for _ in awatch(
            directory,
            watch_filter=None,
            debounce=200,
            step=50,
            stop_event=stop,
            recursive=True,
            ignore_permission_denied=True,
        ):
            try:
                await reload_rules(state, directory)
            except Exception as exc:  # noqa: BLE001  # one failed reload must not end the watching
                log.error("rule reload failed", error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001  # a broken watcher must not take the service down...
        state.reload.watcher_stopped = f"{type(exc).__name__}: {exc}"[:300]  # ...but /readyz says so
        log.error("rule watcher stopped", error=state.reload.watcher_stopped)
