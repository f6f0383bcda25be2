"""The benchmark's targets, and the table printed at the end of ``python -m bench.run``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str
    unit: str
    wanted: str  # as printed
    passes: Callable[[float], bool]
    value: Callable[[dict[str, Any]], float | None]


def _get(results: dict[str, Any], *path: str) -> float | None:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def _ratio(results: dict[str, Any], top: tuple[str, ...], bottom: tuple[str, ...]) -> float | None:
    numerator, denominator = _get(results, *top), _get(results, *bottom)
    return numerator / denominator if numerator is not None and denominator else None


def _difference(results: dict[str, Any], first: tuple[str, ...], second: tuple[str, ...]) -> float | None:
    one, two = _get(results, *first), _get(results, *second)
    return one - two if one is not None and two is not None else None


NOT_RUN: Callable[[dict[str, Any]], float | None] = lambda _: None  # noqa: E731  # measured by no one yet

# Issue 19's targets: every figure that depends on the machine is a ratio to something measured in the same
# run. "bare" is the bare configuration (auth off, SQLite) with the same number of workers; "the bare
# endpoint" is bench/baseline.py.
TARGETS = (
    Target(
        "CPU per small hook call, auth off, vs the bare endpoint",
        "x",
        "<= 4",
        lambda v: v <= 4,
        lambda r: _get(r, "load", "summary", "cpu_per_request_ratio"),
    ),
    Target(
        "production path (JWT, replay store, PostgreSQL, 2 workers) throughput vs bare (2 workers)",
        "x",
        ">= 0.25",
        lambda v: v >= 0.25,
        lambda r: _get(r, "production", "production_vs_bare"),
    ),
    Target(
        "production path p99, 16 connections",
        "ms",
        "<= 25",
        lambda v: v <= 25,
        lambda r: _get(r, "production", "production", "p99_ms"),
    ),
    Target(
        "5,000 Observations end-to-end p50 vs the bare endpoint's p50 on the same body",
        "x",
        "<= 1.5",
        lambda v: v <= 1.5,
        lambda r: _ratio(
            r,
            ("scale", "obs-5000", "service", "latency_ms", "p50"),
            ("scale", "obs-5000", "baseline", "latency_ms", "p50"),
        ),
    ),
    Target(
        "10x catalogue, served, worst request (p50 10x / 1x)",
        "x",
        "<= 2",
        lambda v: v <= 2,
        lambda r: _get(r, "catalogue_served", "worst_ratio"),
    ),
    Target(
        "rule-catalogue reload (read, check, compile, self-test)",
        "s",
        "<= 0.5",
        lambda v: v <= 0.5,
        lambda r: _get(r, "catalogue_10x", "reload_s"),
    ),
    Target(
        "RSS after the 2.8 MB requests vs at ready",
        "MB",
        "<= +25",
        lambda v: v <= 25,
        lambda r: _difference(r, ("memory", "service", "rss_mb"), ("memory_at_ready", "service", "rss_mb")),
    ),
    Target(
        "vs AHRQ CQL Services (real CQL hook), CPU per call (peer not run yet)",
        "x",
        "<= 0.05",
        lambda v: v <= 0.05,
        NOT_RUN,
    ),
    Target(
        "vs a one-rule HealthChain service, CPU per call (peer not run yet)",
        "x",
        "<= 1",
        lambda v: v <= 1,
        NOT_RUN,
    ),
    Target(
        "cost per added Observation vs that peer (peer not run yet)",
        "x",
        "<= 1.5",
        lambda v: v <= 1.5,
        NOT_RUN,
    ),
    Target(
        "cold start vs the fastest Python peer (peer not run yet)", "x", "<= 1", lambda v: v <= 1, NOT_RUN
    ),
    Target(
        "errors (every load run, every server)",
        "",
        "= 0",
        lambda v: v == 0,
        lambda r: _get(r, "errors_total"),
    ),
)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for target in TARGETS:
        value = target.value(results)
        ok = value is not None and not math.isnan(value) and target.passes(value)
        out.append(
            {"name": target.name, "value": value, "unit": target.unit, "target": target.wanted, "ok": ok}
        )
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return out


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [f"Lumbar CDS benchmark, {meta['date']} ({'quick' if meta['quick'] else 'full'})"]
    if not meta.get("runtime_only", True):
        lines.append("NOTE: test tools installed here make the service import more than in production")
    lines.append("")
    rows = [
        [
            t["name"],
            _fmt(t["value"], t["unit"]),
            f"{t['target']} {t['unit']}".strip(),
            "PASS" if t["ok"] else "FAIL",
        ]
        for t in results["targets"]
    ]
    lines += _table(rows, ["figure", "measured", "target", "result"])
    load = results.get("load", {}).get("summary")
    if load:
        lines += [
            "",
            f"{load['connections']} connections, {load['scenario']} request, "
            f"median of {load['rounds']} alternating rounds:",
        ]
        rows = []
        for name in ("baseline", "service"):
            s = load[name]
            rows.append(
                [
                    name,
                    _fmt(s["throughput"], "req/s"),
                    _fmt(s["p50_ms"], "ms"),
                    _fmt(s["p90_ms"], "ms"),
                    _fmt(s["p99_ms"], "ms"),
                    _fmt(s["max_ms"], "ms"),
                    _fmt(s["cpu_ms_per_request"], "ms"),
                    str(s["errors"]),
                ]
            )
        lines += _table(rows, ["server", "throughput", "p50", "p90", "p99", "max", "CPU/request", "errors"])
        lines.append(
            f"ratios service/baseline: throughput {_fmt(load['throughput_ratio'], 'x')} "
            f"(rounds: {', '.join(_fmt(x) for x in load['throughput_ratios'])}), "
            f"server CPU per request {_fmt(load['cpu_per_request_ratio'], 'x')}"
        )
    extra = results.get("load_acute", {}).get("summary")
    if extra:
        lines.append(
            f"{extra['scenario']} request: throughput ratio {_fmt(extra['throughput_ratio'], 'x')}, "
            f"service {_fmt(extra['service']['throughput'], 'req/s')} "
            f"p99 {_fmt(extra['service']['p99_ms'], 'ms')}, "
            f"baseline {_fmt(extra['baseline']['throughput'], 'req/s')}"
        )
    prod = results.get("production", {})
    if prod.get("skipped"):
        lines += ["", f"production path not measured: {prod['skipped']}"]
    elif prod:
        lines += [
            "",
            f"the production path, {prod['workers']} workers each, {prod['connections']} connections, "
            f"median of {prod['rounds']} alternating rounds:",
        ]
        rows = [
            [
                label,
                _fmt(prod[name]["throughput"], "req/s"),
                _fmt(prod[name]["p50_ms"], "ms"),
                _fmt(prod[name]["p99_ms"], "ms"),
                _fmt(prod[name]["cpu_ms_per_request"], "ms"),
                str(prod[name]["errors"]),
            ]
            for name, label in (
                ("baseline", "bare endpoint"),
                ("bare", "service, auth off, SQLite"),
                ("production", "service, JWT ES384 + replay store, PostgreSQL"),
            )
        ]
        lines += _table(rows, ["server", "throughput", "p50", "p99", "CPU/request", "errors"])
        lines.append(
            f"throughput production/bare {_fmt(prod['production_vs_bare'], 'x')}, production/bare endpoint "
            f"{_fmt(prod['throughput_ratio'], 'x')} (rounds: "
            f"{', '.join(_fmt(x) for x in prod['throughput_ratios'])}); CPU excludes PostgreSQL's own"
        )
    scale, inproc = results.get("scale", {}), results.get("inprocess", {})
    if scale:
        lines += ["", "1 connection, end to end p50, and the service's work measured in-process (median):"]
        rows = []
        for name, run in scale.items():
            ip = inproc.get(name, {})
            e2e = run["service"]["latency_ms"]["p50"]
            known = sum(ip.get(k, 0.0) for k in ("parse_ms", "evaluate_ms", "respond_ms"))
            rest = e2e - known
            evaluate, normalise = ip.get("evaluate_ms"), ip.get("normalise_ms")
            rows.append(
                [
                    name,
                    _fmt(run["request_kb"], "KB"),
                    _fmt(run["baseline"]["latency_ms"]["p50"], "ms"),
                    _fmt(ip.get("orjson_ms"), "ms"),
                    _fmt(e2e, "ms"),
                    _fmt(ip.get("parse_ms"), "ms"),
                    _fmt(normalise, "ms"),
                    _fmt(evaluate - normalise if evaluate and normalise else None, "ms"),
                    _fmt(ip.get("respond_ms"), "ms"),
                    _fmt(rest, "ms") if rest >= 0 else "~0 (noise)",
                ]
            )
        header = ["request", "body", "baseline p50", "(orjson)", "service p50", "parse", "normalise", "rules"]
        header.append("respond")
        lines += _table(rows, [*header, "rest"])
        lines.append(
            "  (orjson): orjson.loads of the body, the baseline's work; parse: JSON to the request models;\n"
            "  normalise: PatientRecord; rules: evaluate minus normalise;\n"
            "  respond: cards to JSON; rest: end to end minus those (HTTP, body upload, middleware, audit)"
        )
    cat = results.get("catalogue_10x", {})
    if cat.get("requests"):
        lines += [
            "",
            f"catalogue {cat['rules_1x']} rules vs {cat['rules_10x']} rules ({cat['check']}), "
            "in-process evaluate, median:",
        ]
        rows = [
            [
                name,
                _fmt(r["evaluate_1x_ms"], "ms"),
                _fmt(r["evaluate_10x_ms"], "ms"),
                _fmt(r["ratio"], "x"),
                _fmt(r.get("rules_ratio"), "x"),
            ]
            for name, r in cat["requests"].items()
        ]
        lines += _table(rows, ["request", "1x", "10x", "ratio", "ratio without normalise"])
    served = results.get("catalogue_served", {})
    if served.get("requests"):
        lines += [
            "",
            "the same catalogues served, 1 connection, end to end p50 and server CPU per request (median):",
        ]
        rows = [
            [
                name,
                f"{r['cards_1x']} / {r['cards_10x']}",
                _fmt(r["p50_1x_ms"], "ms"),
                _fmt(r["p50_10x_ms"], "ms"),
                _fmt(r["ratio"], "x"),
                _fmt(r["cpu_1x_ms"], "ms"),
                _fmt(r["cpu_10x_ms"], "ms"),
                _fmt(r["cpu_ratio"], "x"),
            ]
            for name, r in served["requests"].items()
        ]
        header = ["request", "cards 1x / 10x", "p50 1x", "p50 10x", "ratio", "CPU 1x", "CPU 10x", "CPU ratio"]
        lines += _table(rows, header)
    cold = results.get("cold_start", {})
    if cold:
        lines += [
            "",
            f"cold start: {', '.join(_fmt(x, 's') for x in cold['runs_s'])} "
            f"(median {_fmt(cold['median_s'], 's')}); "
            f"first start (empty database and rule cache) {_fmt(cold.get('fresh_database_s'), 's')}; "
            f"CPU time to ready (median) {_fmt(cold.get('median_cpu_s'), 's')}",
        ]
    for label, key in (
        ("at ready", "memory_at_ready"),
        ("after the 16-connection runs", "memory_after_16c"),
        ("after all load runs (5,000 Observations last)", "memory"),
    ):
        memory = results.get(key, {})
        if not memory:
            continue
        lines.append(
            f"memory {label}: "
            + "; ".join(
                f"{name} RSS {_fmt(m['rss_mb'], 'MB')} (peak {_fmt(m['peak_rss_mb'], 'MB')})"
                for name, m in memory.items()
            )
        )
    for name, prof in results.get("profile", {}).items():
        lines += ["", f"profile {name}: {prof['samples']} samples; top self time:"]
        lines += [f"  {row['percent']:5.1f}%  {row['where']}" for row in prof["self"][:10]]
        lines.append("  the project's code, including what it calls:")
        lines += [f"  {row['percent']:5.1f}%  {row['where']}" for row in prof["inclusive_project"][:10]]
        lines.append(
            "  by package: " + ", ".join(f"{r['where']} {r['percent']}%" for r in prof["packages_self"][:8])
        )
    met = sum(t["ok"] for t in results["targets"])
    lines += ["", f"targets met: {met} of {len(results['targets'])}"]
    return "\n".join(lines)
