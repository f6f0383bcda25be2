"""How the worker uses Python's cyclic garbage collector (bench profiles, docs/performance.md).

- Long-lived objects (the rules, the models' schemas) are frozen out of the collector's way after loading.
- The young-generation threshold is raised: a large request allocates hundreds of thousands of short-lived
  objects, and the default (700) ran the collector hundreds of times per 5,000-Observation request.
- The synchronous part of a hook call (validating the body, evaluating, rendering) runs with the collector
  paused. It creates no reference cycles worth collecting (its objects are freed by reference counting as
  soon as the call ends), yet at any threshold its allocations set off collections that traverse every
  young object: 20% of parsing a 5,000-Observation request. The event loop runs nothing else meanwhile.
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


class Paused:
    """``with PAUSED:`` runs a block with the collector off, restoring it after (nesting-safe)."""

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


def paused() -> Paused:
    return Paused()
