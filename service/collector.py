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
- The C allocator is left alone: asking glibc to return its free heap after each large request
  (``malloc_trim``) kept ~9 MB less after the 2.8 MB requests but cost ~20 ms of CPU per such request, as the
  next one faulted the pages back in (bench A/B, docs/performance.md "Which optimisations pay"); removed.
"""

from __future__ import annotations

import gc
from types import TracebackType

YOUNG_THRESHOLD = 50_000


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
