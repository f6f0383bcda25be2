"""How the worker manages its memory: Python's cyclic garbage collector and the C allocator (bench
profiles, docs/performance.md).

- Long-lived objects (the rules, the models' schemas) are frozen out of the collector's way after loading.
- The young-generation threshold is raised: a large request allocates hundreds of thousands of short-lived
  objects, and the default (700) ran the collector hundreds of times per 5,000-Observation request.
- A hook call runs with the collector paused from parsing the body until the parsed request is released
  (evaluated and rendered). It creates no reference cycles (its objects are freed by reference counting),
  yet at any threshold its allocations set off collections that traverse every young object, the whole
  parsed request included: 20% of parsing a 5,000-Observation request, and 10 ms more when the collector
  resumed while that request was still alive. The pause spans one ``await``: fetching prefetch data the
  client did not send, bounded by the FHIR timeout. Pauses of concurrent calls may interleave; the
  collector is back on whenever the call that paused it first ends, so it is never left off.
- After a large request (``TRIM_AFTER_BYTES``), the C allocator is asked to give its free memory back to
  the system (``trim``): glibc keeps the heap the largest request needed (pydantic-core's parse of the
  body, large strings and lists), ~20 MB after a 2.8 MB request, until a later request reuses it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable
from types import TracebackType

import structlog

YOUNG_THRESHOLD = 50_000
TRIM_AFTER_BYTES = 1_000_000
log = structlog.get_logger("lumbar.memory")


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on a C library without it (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return function


_MALLOC_TRIM = _malloc_trim()


def trim() -> None:
    """Return the C allocator's free memory to the system. Blocking (a few milliseconds on a large heap,
    with the GIL released): run it in a worker thread after the response has been sent."""
    if _MALLOC_TRIM is None:
        return
    started = time.perf_counter()
    _MALLOC_TRIM(0)
    log.debug("memory trimmed", duration_ms=round((time.perf_counter() - started) * 1000, 2))


def settle() -> None:
    """Collect what is garbage now and freeze the survivors (after loading or reloading the rules)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 100)


class paused:  # used like a function: ``with paused():``
    """``with paused():`` runs a block with the collector off, restoring it after (nesting-safe)."""

    __slots__ = ("_resume",)

    def __init__(self) -> None:
        self._resume = False

    def __enter__(self) -> None:
        self._resume = gc.isenabled()
        gc.disable()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._resume:
            gc.enable()
