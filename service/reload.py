"""Hot reload of the rule catalogue while the service keeps answering.

Each worker watches ``LUMBAR_RULES_DIR`` itself (the directory, not its files: container config maps swap a
symlink). On a change the whole catalogue is loaded and validated in a thread; a valid one replaces the
current ``Catalogue`` in a single assignment, so a request sees the old rule set or the
new one, never a mix. An invalid one leaves the last good rule set serving; every error is logged as
``path:line:col: error: ...`` and shown on ``/readyz`` and in the metrics.
"""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime
from pathlib import Path

import structlog
from watchfiles import awatch

from rules.engine.diagnostics import RuleSetError
from rules.engine.ruleset import load_ruleset
from service.catalogue import build_catalogue
from service.state import AppState

log = structlog.get_logger("lumbar.reload")


async def reload_rules(state: AppState, directory: Path) -> bool:
    """Load, validate and swap in the catalogue at ``directory``; False (and the old one kept) if invalid."""
    status = state.reload
    status.at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        ruleset = await asyncio.to_thread(load_ruleset, directory)
    except RuleSetError as exc:
        status.ok = False
        status.errors = [d.render() for d in exc.diagnostics]
        state.metrics.reloads.labels("error").inc()
        state.metrics.reload_failing.set(1)
        for diagnostic in exc.diagnostics:
            log.error("rule reload rejected", diagnostic=diagnostic.render())
        return False
    except OSError as exc:  # the directory vanished mid-swap; the next event retries
        status.ok = False
        status.errors = [f"{directory}: {exc}"]
        state.metrics.reloads.labels("error").inc()
        state.metrics.reload_failing.set(1)
        log.error("rule reload failed", error=str(exc))
        return False
    status.ok, status.errors = True, []
    state.metrics.reload_failing.set(0)
    if ruleset.version == state.catalogue.ruleset.version:
        return True
    previous = state.catalogue.ruleset.version
    state.catalogue = build_catalogue(ruleset)  # the one atomic swap
    status.reloads += 1
    state.metrics.reloads.labels("ok").inc()
    state.metrics.set_ruleset(ruleset.version, len(ruleset.rules))
    log.info("rules reloaded", version=ruleset.version, previous=previous, rules=len(ruleset.rules))
    # The old rule set is garbage now: let the collector see it, then park the new long-lived objects.
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return True


async def watch_rules(state: AppState, directory: Path, stop: asyncio.Event) -> None:
    """Reload on every change under ``directory`` until ``stop`` is set."""
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
            await reload_rules(state, directory)
    except Exception as exc:  # noqa: BLE001  # a broken watcher must not take the service down
        log.error("rule watcher stopped", error=f"{type(exc).__name__}: {exc}")
