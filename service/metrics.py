"""Prometheus metrics of one application instance (its own registry, so tests can build many apps).

With several workers (``lumbar serve --workers N``) every worker writes its values to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` (``lumbar serve`` sets one up before the workers start), and ``/metrics``,
whichever worker answers it, adds up all workers: the counts are the service's, not one worker's. Gauges say
how they combine across workers (``multiprocess_mode``); a stopped worker's live gauges are removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

from service.settings import SUPERVISOR_ENV

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The shared metrics directory when the service runs in multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.hook_calls = Counter(
            "lumbar_hook_calls", "CDS Hooks service calls", ["service", "hook", "status"], registry=r
        )
        self.hook_latency = Histogram(
            "lumbar_hook_latency_seconds",
            "Hook call latency, request to response",
            ["service"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.rules_fired = Counter("lumbar_rules_fired", "Rules that produced a card", ["rule"], registry=r)
        self.rule_errors = Counter(
            "lumbar_rule_errors", "Rules that raised during evaluation", ["rule"], registry=r
        )
        self.fhir_fetches = Counter(
            "lumbar_fhir_fetch", "Hook calls that had to fetch from the FHIR server", ["outcome"], registry=r
        )
        self.prefetch_unavailable = Counter(
            "lumbar_prefetch_unavailable",
            "Hook calls evaluated or refused without a resource type the EHR could not provide",
            ["type"],
            registry=r,
        )
        self.fhir_latency = Histogram(
            "lumbar_fhir_fetch_seconds",
            "Time spent fetching missing prefetch data from the FHIR server",
            ["outcome"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10),
        )
        self.feedback = Counter("lumbar_feedback_items", "Feedback items stored", ["outcome"], registry=r)
        self.replay_fallbacks = Counter(
            "lumbar_replay_store_fallbacks",
            "Client JWTs checked for replay in this worker only, the shared store not answering",
            registry=r,
        )
        self.replays_found_late = Counter(
            "lumbar_replays_found_late",
            "Client JWTs found replayed to another worker once the replay store answered again",
            registry=r,
        )
        self.auth_failures = Counter(
            "lumbar_auth_failures", "Calls refused for client authentication", registry=r
        )
        self.reloads = Counter("lumbar_rules_reloads", "Rule catalogue reloads", ["outcome"], registry=r)
        self.reload_failing = Gauge(
            "lumbar_rules_reload_failing",
            "1 while the last reload was rejected and the previous rules still serve",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reload_error_time = Gauge(
            "lumbar_rules_last_reload_error_timestamp_seconds",
            "When a rule reload was last rejected (Unix time)",
            registry=r,
            multiprocess_mode="max",
        )
        self.audit_pending = Gauge(
            "lumbar_audit_pending",
            "Audit records waiting to be written",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.audit_written = Counter("lumbar_audit_written", "Audit records written", registry=r)
        self.audit_write_failures = Counter(
            "lumbar_audit_write_failures", "Audit batch writes that failed (and were retried)", registry=r
        )
        self.audit_spilled = Counter(
            "lumbar_audit_spilled",
            "Audit records spilled to a local file while the database lagged",
            registry=r,
        )
        self.audit_recovered = Counter(
            "lumbar_audit_recovered", "Spilled audit records written back to the database", registry=r
        )
        self.audit_dropped = Counter(
            "lumbar_audit_dropped",
            "Audit records lost: no spill folder, a full one, or unreadable",
            registry=r,
        )
        self.ruleset = Gauge(
            "lumbar_rules_info",
            "The rule set being served: its rule count, labelled with its version",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._version: str | None = None

    def set_ruleset(self, version: str, count: int) -> None:
        if self._version is not None and self._version != version:
            if multiprocess_dir():  # a value file cannot be removed: the old version reads 0
                self.ruleset.labels(self._version).set(0)
            else:
                self.ruleset.remove(self._version)
        self._version = version
        self.ruleset.labels(version).set(count)

    def render(self) -> bytes:
        """The text exposition: this instance's registry, or every worker's values in multiprocess mode;
        with the process figures (CPU, memory, open files) of every worker, labelled by ``pid``."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry) + generate_latest(_PROCESSES)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(combined) + generate_latest(_PROCESSES)

    @staticmethod
    def worker_stopped() -> None:
        """Drop this worker's live gauges from the shared directory (call at shutdown)."""
        if multiprocess_dir():
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def worker_pids() -> list[int]:
    """This process and, under ``lumbar serve --workers N``, its sibling workers (children of the same
    supervisor, ``LUMBAR_SUPERVISOR_PID``), read from /proc (Linux); this process alone elsewhere."""
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    own = os.getpid()
    if not supervisor.isdigit() or int(supervisor) != os.getppid():
        return [own]
    pids = {own}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            sibling = int(stat.rpartition(")")[2].split()[1]) == int(supervisor)  # field 4: the parent
            # a worker, not multiprocessing's resource tracker (the supervisor's other child)
            if sibling and b"spawn_main" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(pids)


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


class _WorkerProcesses:
    """prometheus_client's process figures for every worker, each sample labelled with its ``pid``."""

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in worker_pids():
            collector = ProcessCollector(pid=_constant(pid), registry=None)
            for family in collector.collect():
                empty = Metric(family.name, family.documentation, family.type)
                merged = families.setdefault(family.name, empty)
                for sample in family.samples:
                    merged.samples.append(sample._replace(labels={**sample.labels, "pid": str(pid)}))
        yield from families.values()


_PROCESSES = CollectorRegistry()
_PROCESSES.register(_WorkerProcesses())
