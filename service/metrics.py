"""Prometheus metrics of one application instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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
        self.feedback = Counter("lumbar_feedback_items", "Feedback items stored", ["outcome"], registry=r)
        self.auth_failures = Counter(
            "lumbar_auth_failures", "Calls refused for client authentication", registry=r
        )
        self.reloads = Counter("lumbar_rules_reloads", "Rule catalogue reloads", ["outcome"], registry=r)
        self.reload_failing = Gauge(
            "lumbar_rules_reload_failing",
            "1 while the last reload was rejected and the previous rules still serve",
            registry=r,
        )
        self.audit_pending = Gauge("lumbar_audit_pending", "Audit records waiting to be written", registry=r)
        self.audit_written = Counter("lumbar_audit_written", "Audit records written", registry=r)
        self.audit_write_failures = Counter(
            "lumbar_audit_write_failures", "Audit batch writes that failed (and were retried)", registry=r
        )
        self.ruleset = Gauge("lumbar_rules_info", "The rule set being served", ["version"], registry=r)

    def set_ruleset(self, version: str, count: int) -> None:
        self.ruleset.clear()
        self.ruleset.labels(version).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
