"""The benchmark: the real service against a bare FastAPI baseline, driven from a separate load generator.

    python -m bench.run [--quick] [--profile]

Every figure that depends on the machine is reported next to the baseline measured in the same run, and the
two servers are driven alternately (baseline, service, baseline, service...) so that other work on the
machine weighs on both. The exit code is 0 unless the harness itself broke: this is a report, not a test.
Results: a table on stdout and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench import catalogue, production, profile, report, scenarios, servers
from bench.servers import Server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MAIN_SCENARIO = "cauda-equina"


@dataclass(frozen=True)
class Plan:
    quick: bool
    rounds: int  # alternating rounds at 16 connections
    warmup_s: float
    duration_s: float
    scale_warmup_s: float
    scale_duration_s: float
    inprocess_budget_s: float  # per timed call, per request
    cold_starts: int
    connections: int = 16
    copies: int = 10


FULL = Plan(False, 3, 1.0, 5.0, 0.5, 3.0, 1.0, 3)
QUICK = Plan(True, 1, 0.5, 1.5, 0.3, 1.0, 0.2, 1)


def _env(work: Path, database: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LUMBAR_AUTH": "off",
        "LUMBAR_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "LUMBAR_LOG_LEVEL": "warning",
        "LUMBAR_RULES_WATCH": "false",
    }


def start_service(name: str, work: Path, database: Path, rules: Path | None = None) -> Server:
    port = servers.free_port()
    args = ["-m", "service", "serve", "--host", servers.HOST, "--port", str(port), "--workers", "1"]
    # The replicated catalogue's embedded tests cannot all pass (a case expecting "3 cards in the response"
    # sees the 30 of its ten copies), and `lumbar serve` refuses a catalogue whose tests fail: allow it there.
    replica = {"LUMBAR_RULES_DIR": str(rules), "LUMBAR_ALLOW_FAILING_TESTS": "true"}
    env = _env(work, database) | (replica if rules is not None else {})
    return servers.spawn(name, args, env, work / f"{name}.log", ROOT)


def start_baseline(work: Path) -> Server:
    args = ["-m", "bench.baseline", "--host", servers.HOST, "--port", str(servers.free_port())]
    return servers.spawn("baseline", args, dict(os.environ), work / "baseline.log", ROOT)


def drive(
    server: Server,
    body: Path,
    connections: int,
    warmup_s: float,
    duration_s: float,
    tokens: Path | None = None,
) -> dict[str, Any]:
    """One closed-loop run from a load generator process, with the server's CPU time over the run (and,
    with ``tokens``, a bearer token of that file on each request)."""
    command = [sys.executable, "-m", "bench.loadgen", "--port", str(server.port), "--body", str(body)]
    command += ["--path", scenarios.SERVICE_PATH, "--connections", str(connections)]
    command += ["--tokens", str(tokens)] if tokens else []
    command += ["--warmup", str(warmup_s), "--duration", str(duration_s), "--grace", "10"]
    cpu0, wall0 = servers.cpu_seconds(server.pid), time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=warmup_s + duration_s + 40, check=False
    )
    cpu, wall = servers.cpu_seconds(server.pid) - cpu0, time.perf_counter() - wall0
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["server"] = server.name
    result["server_cpu_s"] = round(cpu, 3)
    result["server_cpu_share"] = round(cpu / wall, 3)
    sent = max(1, result["requests_including_warmup"])
    result["server_cpu_ms_per_request"] = round(cpu * 1000 / sent, 4)
    return result


def alternate(
    pair: tuple[Server, Server], body: Path, rounds: int, connections: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Baseline then service, ``rounds`` times; ratios per adjacent pair, summarised by their median."""
    runs = []
    for _ in range(rounds):
        base = drive(pair[0], body, connections, warmup_s, duration_s)
        serv = drive(pair[1], body, connections, warmup_s, duration_s)
        ratio = serv["throughput"] / base["throughput"] if base["throughput"] else float("nan")
        runs.append({"baseline": base, "service": serv, "throughput_ratio": round(ratio, 4)})

    def side(name: str) -> dict[str, Any]:
        mine = [r[name] for r in runs]

        def med(pick: Callable[[dict[str, Any]], float]) -> float:
            return round(statistics.median(pick(m) for m in mine), 3)

        return {
            "throughput": med(lambda m: m["throughput"]),
            "p50_ms": med(lambda m: m["latency_ms"]["p50"]),
            "p90_ms": med(lambda m: m["latency_ms"]["p90"]),
            "p99_ms": med(lambda m: m["latency_ms"]["p99"]),
            "max_ms": round(max(m["latency_ms"]["max"] for m in mine), 3),
            "cpu_ms_per_request": med(lambda m: m["server_cpu_ms_per_request"]),
            "client_cpu_share": med(lambda m: m["client_cpu_share"]),
            "errors": sum(m["errors"] for m in mine),
        }

    summary = {
        "rounds": rounds,
        "connections": connections,
        "baseline": side("baseline"),
        "service": side("service"),
    }
    summary["throughput_ratios"] = [r["throughput_ratio"] for r in runs]
    summary["throughput_ratio"] = round(statistics.median(summary["throughput_ratios"]), 4)
    cpu_base = summary["baseline"]["cpu_ms_per_request"]
    summary["cpu_per_request_ratio"] = (
        round(summary["service"]["cpu_ms_per_request"] / cpu_base, 2) if cpu_base else None
    )
    return {"runs": runs, "summary": summary}


def timed(calls: dict[str, Callable[[], Any]], budget_s: float, min_reps: int = 5) -> dict[str, float]:
    """Median milliseconds of each call, the calls interleaved (a, b, c, a, b, c...) so that a burst of other
    work on the machine weighs on all of them: at least ``min_reps`` rounds, more while within ``budget_s``,
    at most 300."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    end = time.perf_counter() + budget_s
    rounds = 0
    while rounds < 300 and (rounds < min_reps or time.perf_counter() < end):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
        rounds += 1
    return {name: round(statistics.median(t) * 1000, 4) for name, t in times.items()}


def inprocess(bodies: dict[str, bytes], plan: Plan, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse, evaluate (1x and 10x catalogue) and serialise each request in this process, as the handler
    does."""
    from cds_hooks.request import parse_hook_request
    from rules import BUNDLED_CATALOG
    from rules.engine import evaluate, load_ruleset, prepare

    copies_dir = work / f"catalog-{plan.copies}x"
    rules_10x = catalogue.replicate(BUNDLED_CATALOG, copies_dir, plan.copies)
    check = subprocess.Popen(  # the CLI check runs on the other core while this process loads the same files
        [sys.executable, "-m", "service", "check", str(copies_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=_env(work, work / "check.db"),
    )
    try:
        started = time.perf_counter()
        one = load_ruleset(BUNDLED_CATALOG)
        load_1x = time.perf_counter() - started
        started = time.perf_counter()
        ten = load_ruleset(copies_dir)
        load_10x = time.perf_counter() - started
        output, _ = check.communicate(timeout=300)
    finally:
        if check.poll() is None:
            check.kill()
            check.wait()
    lines = output.strip().splitlines()
    cat: dict[str, Any] = {
        "copies": plan.copies,
        "rules_1x": len(one.rules),
        "rules_10x": len(ten.rules),
        "rule_files_written": rules_10x,
        "check_passed": check.returncode == 0,
        "check": ("service check: ok" if check.returncode == 0 else "service check FAILED"),
        "check_output": lines[-1] if lines else "",
        "load_1x_s": round(load_1x, 3),
        "load_10x_s": round(load_10x, 3),
        "requests": {},
    }
    from service.catalogue import build_catalogue, load_tested

    reloads = []
    for _ in range(3):  # what a reload does: read, check, compile, run the embedded tests, build
        started = time.perf_counter()
        build_catalogue(load_tested(BUNDLED_CATALOG)[0])
        reloads.append(time.perf_counter() - started)
    cat["reload_s"] = round(statistics.median(reloads), 3)
    gc.collect()
    gc.freeze()  # as the service does after loading its rules
    now = datetime.now(UTC)
    out: dict[str, Any] = {}
    for name, body in bodies.items():
        request = parse_hook_request(body)
        evaluation = evaluate(one, request, now)
        evaluation_10x = evaluate(ten, request, now)
        # Out of the collector's way too: with everything frozen, each full collection scans all other live
        # objects, and holding a parsed 5,000-Observation request here doubled the parse time measured.
        gc.collect()
        gc.freeze()
        ms = timed(
            {
                "orjson_ms": lambda body=body: orjson.loads(body),  # what the baseline does with the body
                "parse_ms": lambda body=body: parse_hook_request(body),
                # normalising and indexing the record (PatientRecord): the part of evaluate that does not
                # depend on the number of rules
                "normalise_ms": lambda r=request: prepare(one, r, now),
                "evaluate_ms": lambda r=request: evaluate(one, r, now),
                "evaluate_10x_ms": lambda r=request: evaluate(ten, r, now),
                "respond_ms": lambda e=evaluation: orjson.dumps(e.response().to_wire()),
            },
            plan.inprocess_budget_s * 5,
        )
        one_ms, ten_ms, normalise_ms = ms["evaluate_ms"], ms.pop("evaluate_10x_ms"), ms["normalise_ms"]
        out[name] = ms | {"cards": len(evaluation.cards), "fired": evaluation.fired()}
        cat["requests"][name] = {
            "evaluate_1x_ms": one_ms,
            "evaluate_10x_ms": ten_ms,
            "ratio": round(ten_ms / one_ms, 2),
            # the part that grows with the rules: evaluation minus normalisation (measured with 1x)
            "rules_ratio": round((ten_ms - normalise_ms) / (one_ms - normalise_ms), 2)
            if one_ms > normalise_ms
            else None,
            "cards_1x": len(evaluation.cards),
            "cards_10x": len(evaluation_10x.cards),
        }
    cat["worst_ratio"] = max(r["ratio"] for r in cat["requests"].values()) if cat["check_passed"] else None
    return out, cat


CATALOGUE_SCENARIOS = ("cauda-equina", "acute-lbp", "obs-50")


def catalogue_served(
    service: Server, plan: Plan, work: Path, live: list[Server], files: dict[str, Path]
) -> dict[str, Any]:
    """The 10x catalogue as a hook call sees it: a second service serving it, driven in turn with the 1x
    one (1x, 10x, 1x, 10x, ...) at one connection with the same requests; end to end p50 and CPU."""
    ten = start_service("service-10x", work, work / "bench-10x.db", rules=work / f"catalog-{plan.copies}x")
    live.append(ten)
    try:
        servers.wait_ready(ten)
        out: dict[str, Any] = {"requests": {}, "errors": 0}
        duration = plan.scale_duration_s * 2 / 3
        for name in CATALOGUE_SCENARIOS:
            body = files[name].read_bytes()
            cards = {}
            for label, server in (("1x", service), ("10x", ten)):
                status, answer = servers.post(server.port, scenarios.SERVICE_PATH, body)
                out["errors"] += status != 200
                cards[label] = len(orjson.loads(answer).get("cards", [])) if status == 200 else None
            runs = alternate((service, ten), files[name], plan.rounds, 1, plan.scale_warmup_s, duration)
            out["errors"] += sum(r[side]["errors"] for r in runs["runs"] for side in ("baseline", "service"))
            one, many = runs["summary"]["baseline"], runs["summary"]["service"]  # (1x, 10x) in that order
            out["requests"][name] = {
                "p50_1x_ms": one["p50_ms"],
                "p50_10x_ms": many["p50_ms"],
                "ratio": round(many["p50_ms"] / one["p50_ms"], 2),
                "cpu_1x_ms": one["cpu_ms_per_request"],
                "cpu_10x_ms": many["cpu_ms_per_request"],
                "cpu_ratio": round(many["cpu_ms_per_request"] / one["cpu_ms_per_request"], 2),
                "cards_1x": cards["1x"],
                "cards_10x": cards["10x"],
            }
        out["worst_ratio"] = max(r["ratio"] for r in out["requests"].values())
        out["memory_10x"] = servers.memory_mb(ten.pid)
        return out
    finally:
        servers.stop(ten)
        live.remove(ten)


def cold_starts(plan: Plan, work: Path, live: list[Server]) -> dict[str, Any]:
    """Spawn to first 200 on /readyz: once on an empty database and an empty cache of parsed rule files
    (what a first deployment does), then ``plan.cold_starts`` restarts on them."""
    database = work / "cold.db"
    times: list[float] = []
    cpu: list[float] = []  # CPU seconds used by then: less sensitive than wall time to other work
    for index in range(plan.cold_starts + 1):
        server = start_service(f"cold-{index}", work, database)
        live.append(server)
        try:
            times.append(round(servers.wait_ready(server), 3))
            cpu.append(round(servers.cpu_seconds(server.pid), 3))
        finally:
            servers.stop(server)
            live.remove(server)
    return {
        "fresh_database_s": times[0],
        "runs_s": times[1:],
        "median_s": statistics.median(times[1:]),
        "cpu_s": cpu[1:],
        "median_cpu_s": statistics.median(cpu[1:]),
    }


def sanity(pair: tuple[Server, Server], bodies: dict[str, bytes]) -> dict[str, Any]:
    """Each request once to each server: status, and the service's cards."""
    out = {}
    for name, body in bodies.items():
        base_status, _ = servers.post(pair[0].port, scenarios.SERVICE_PATH, body)
        status, answer = servers.post(pair[1].port, scenarios.SERVICE_PATH, body)
        cards = orjson.loads(answer).get("cards", []) if status == 200 else []
        out[name] = {
            "request_kb": round(len(body) / 1000, 1),
            "baseline_status": base_status,
            "service_status": status,
            "response_kb": round(len(answer) / 1000, 1),
            "cards": [f"[{c['indicator']}] {c['summary']}" for c in cards],
        }
    return out


def profiles(service: Server, files: dict[str, Path], plan: Plan) -> dict[str, Any]:
    """py-spy on the service during a 16-connection run and during single 5,000-Observation requests."""
    out = {}
    seconds = 3 if plan.quick else 6
    cases = [("16-connections", MAIN_SCENARIO, plan.connections), ("obs-5000", "obs-5000", 1)]
    for label, scenario, connections in cases:
        raw = RESULTS / f"profile-{label}.txt"
        spy = profile.start(service.pid, seconds, raw)
        try:
            time.sleep(0.5)  # attached before the load starts
            run = drive(service, files[scenario], connections, 0.3, seconds - 1.5)
            _, err = spy.communicate(timeout=seconds + 30)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-1000:]}")
        out[label] = profile.summarise(raw) | {
            "raw": str(raw.relative_to(ROOT)),
            "throughput": run["throughput"],
        }
    return out


def meta(plan: Plan) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False)
        return done.stdout.strip()

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": plan.quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "versions": {
            p: metadata.version(p) for p in ("fastapi", "starlette", "uvicorn", "pydantic", "uvloop")
        },
        # the container image installs the runtime dependencies only; test tools add imports (and memory)
        "runtime_only": importlib.util.find_spec("pytest") is None,
        "plan": plan.__dict__,
    }


def _memory(*measured: Server) -> dict[str, dict[str, float]]:
    return {server.name: servers.memory_mb(server.pid) for server in measured}


def run(plan: Plan, work: Path, live: list[Server], with_profile: bool) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, Any] = {"meta": meta(plan)}
    bodies = scenarios.build(datetime.now(UTC))
    files = {}
    for name, body in bodies.items():
        files[name] = work / f"{name}.json"
        files[name].write_bytes(body)
    print("in-process timings and the 10x catalogue...", flush=True)
    results["inprocess"], results["catalogue_10x"] = inprocess(bodies, plan, work)
    print("cold starts...", flush=True)
    results["cold_start"] = cold_starts(plan, work, live)
    baseline, service = start_baseline(work), start_service("service", work, work / "bench.db")
    live += [baseline, service]
    servers.wait_ready(baseline)
    servers.wait_ready(service)
    results["memory_at_ready"] = _memory(service, baseline)
    pair = (baseline, service)
    small = {name: body for name, body in bodies.items() if not name.startswith("obs-")}
    results["scenarios"] = sanity(pair, small)  # the large ones later, so memory is seen before and after
    print(f"{plan.rounds} alternating rounds at {plan.connections} connections...", flush=True)
    load = alternate(
        pair, files[MAIN_SCENARIO], plan.rounds, plan.connections, plan.warmup_s, plan.duration_s
    )
    load["summary"]["scenario"] = MAIN_SCENARIO
    results["load"] = load
    acute = alternate(pair, files["acute-lbp"], 1, plan.connections, plan.warmup_s, plan.duration_s)
    acute["summary"]["scenario"] = "acute-lbp"
    results["load_acute"] = acute
    print("the production path (JWT, PostgreSQL, 2 workers) against the bare one...", flush=True)
    results["production"] = production.measure(
        drive, files[MAIN_SCENARIO], work, live, plan.rounds, plan.warmup_s, plan.duration_s
    )
    if "skipped" in results["production"]:
        print(f"production path not measured: {results['production']['skipped']}", flush=True)
    results["memory_after_16c"] = _memory(service)  # before the large requests
    print("scale runs at 1 connection...", flush=True)
    results["scenarios"] |= sanity(pair, {name: body for name, body in bodies.items() if name not in small})
    results["scale"] = {}
    for count in scenarios.SCALES:
        name = f"obs-{count}"
        seconds = plan.scale_duration_s * (2 if count >= 5000 else 1)  # about half a second per request
        runs = alternate(pair, files[name], 1, 1, plan.scale_warmup_s, seconds)["runs"][0]
        runs["request_kb"] = round(len(bodies[name]) / 1000, 1)
        results["scale"][name] = runs
    results["memory"] = _memory(service, baseline)
    print("the 10x catalogue served, against the 1x service, at 1 connection...", flush=True)
    results["catalogue_served"] = catalogue_served(service, plan, work, live, files)
    every = [r for k in ("load", "load_acute") for r in results[k]["runs"]] + list(results["scale"].values())
    load_errors = sum(r[side]["errors"] for r in every for side in ("baseline", "service"))
    load_errors += results["catalogue_served"]["errors"]
    load_errors += sum(
        results["production"].get(side, {}).get("errors", 0) for side in ("baseline", "bare", "production")
    )
    bad_status = sum(
        (s["service_status"] != 200) + (s["baseline_status"] != 200) for s in results["scenarios"].values()
    )
    results["errors_total"] = load_errors + bad_status
    if with_profile and profile.py_spy() is None:
        results["profile_skipped"] = "py-spy is not installed (.venv-bench/bin/pip install py-spy)"
        print(f"no profile: {results['profile_skipped']}", flush=True)
    elif with_profile:
        print("profiling the service with py-spy...", flush=True)
        results["profile"] = profiles(service, files, plan)
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lumbar CDS benchmark (a report, not a test)")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    parser.add_argument("--profile", action="store_true", help="also sample the service with py-spy")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL

    def terminated(signum: int, _: Any) -> None:
        raise SystemExit(128 + signum)  # so that the finally below stops the servers

    signal.signal(signal.SIGTERM, terminated)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lumbar-bench-"))
    live: list[Server] = []
    try:
        results = run(plan, work, live, args.profile)
    except Exception:  # noqa: BLE001  # the harness broke: say where, exit 2
        traceback.print_exc()
        for server in live:
            print(f"--- {server.name} log:\n{server.log_tail()}", file=sys.stderr)
        return 2
    finally:
        for server in reversed(live):
            servers.stop(server)
        shutil.rmtree(work, ignore_errors=True)
    results["targets"] = report.evaluate_targets(results)
    results["targets_met"] = sum(t["ok"] for t in results["targets"])
    print()
    print(report.render(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
