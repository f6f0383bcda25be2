"""The ``lumbar`` command line: serve, check, test, explain, report, purge.

Exit codes: 0 success, 1 rule errors or failing tests, 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cds_hooks.fhirtime import parse_fhir_datetime
from cds_hooks.outcome import outcome_from_validation
from cds_hooks.request import HookRequest, parse_hook_request
from rules.engine import (
    Diagnostic,
    RuleSet,
    RuleSetError,
    check_icd,
    explain,
    load_ruleset,
    render_all,
    render_trace,
    run_tests,
)
from service.catalogue import RuleTestsFailed, load_tested
from service.settings import SUPERVISOR_ENV, Settings

if TYPE_CHECKING:  # imported where explain needs it (it pulls in httpx)
    from service.prefetching import Completed


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            message = str(error["msg"]).removeprefix("Value error, ")
            print(f"error: LUMBAR_{str(error['loc'][0]).upper()}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


def _catalogues(paths: Sequence[str]) -> list[tuple[Path, set[str] | None]]:
    """Each PATH is a catalogue folder, or a file inside one (then only that file's problems are shown)."""
    if not paths:
        return [(_settings().rules_dir, None)]
    out: dict[Path, set[str] | None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out[path] = None
            continue
        folder = path.parent.parent if path.parent.name == "valuesets" else path.parent
        files = out.setdefault(folder, set())
        if files is not None:
            files.add(str(path))
    return list(out.items())


def _load(folder: Path) -> RuleSet:
    return load_ruleset(folder)


def _only(diagnostics: Sequence[Diagnostic], files: set[str] | None) -> list[Diagnostic]:
    """The diagnostics of the named files (all of them when no file was named)."""
    return [d for d in diagnostics if files is None or any(d.path.endswith(f.lstrip("./")) for f in files)]


def cmd_check(args: argparse.Namespace) -> int:
    failed = False
    for folder, files in _catalogues(args.paths):
        try:
            ruleset = _load(folder)
        except RuleSetError as exc:
            print(render_all(_only(exc.diagnostics, files) or exc.diagnostics))
            failed = True
            continue
        official = _only(check_icd(ruleset.icd_refs), files)
        if official:
            print(render_all(official))
            failed = True
            continue
        warnings = _only(ruleset.warnings, files)
        if warnings:
            print(render_all(warnings))
        summary = (
            f"{len(ruleset.rules)} rules, {len(ruleset.valuesets)} value sets, version {ruleset.version}"
        )
        print(f"{folder}: {summary}: ok" + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 1 if failed else 0


def cmd_test(args: argparse.Namespace) -> int:
    failed = 0
    total = 0
    for folder, _ in _catalogues(args.paths):
        try:
            ruleset = _load(folder)
        except RuleSetError as exc:
            print(render_all(exc.diagnostics))
            return 1
        selected = set(args.rule) if args.rule else None
        unknown = (selected or set()) - set(ruleset.by_id)
        if unknown:
            print(f"error: unknown rule id(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        results = run_tests(ruleset, selected)
        for result in results:
            total += 1
            if not result.ok:
                failed += 1
                print(f"FAIL {result.report()}")
            elif args.verbose:
                print(
                    f"ok   {result.rule_id} :: {result.name}"
                    + (f" (xfail: {result.xfail})" if result.xfail else "")
                )
    print(f"{total - failed} passed, {failed} failed, {total} cases")
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        ruleset = _load(Path(args.rules) if args.rules else _settings().rules_dir)
    except RuleSetError as exc:
        print(render_all(exc.diagnostics))
        return 1
    try:
        request = parse_hook_request(Path(args.request).read_bytes())
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        for issue in outcome_from_validation(exc)["issue"]:
            print(f"error: {issue['diagnostics']}", file=sys.stderr)
        return 2
    unknown = set(args.rule or ()) - set(ruleset.by_id)
    if unknown:
        print(f"error: unknown rule id(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    now = parse_fhir_datetime(args.now).start if args.now else datetime.now(UTC)
    completed = asyncio.run(_complete(_settings(), ruleset, request))
    for key, why in completed.unavailable.items():
        print(f"missing data: prefetch {key!r}: {why}", file=sys.stderr)
    if completed.refused:
        print("refused: nothing about the patient could be read (the service answers 412)", file=sys.stderr)
        return 3
    request = completed.request
    evaluation, traces = explain(ruleset, request, now)
    print(f"hook {request.hook} at {now.isoformat()}, rule-set {ruleset.version}")
    if not evaluation.has_back_pain:
        print("no low back pain in the record (knowledge base B4): no rule applies")
    for rule_id, verdict in evaluation.verdicts.items():
        if args.rule and rule_id not in args.rule:
            continue
        line = f"{verdict.status:15} {rule_id}"
        if verdict.indicator:
            line += f" [{verdict.indicator}]"
        if verdict.suppressed_by:
            line += f" (suppressed by {', '.join(verdict.suppressed_by)})"
        if verdict.card and verdict.card != rule_id:
            line += f" (on the card of {verdict.card})"
        if verdict.error:
            line += f" ({verdict.error})"
        print(line)
        if rule_id in traces and evaluation.has_back_pain:
            print("\n".join(render_trace(traces[rule_id])))
    for note in evaluation.notes:
        print(f"note: {note}")
    print(f"{len(evaluation.cards)} card(s):")
    for card in evaluation.cards:
        print(f"  [{card.indicator}] {card.summary}")
        for suggestion in card.suggestions:
            print(f"      - {suggestion.label}")
    for action in evaluation.system_actions:
        print(f"  system action: {action.description}")
    if completed.unavailable:  # the service would have answered the same, saying so on its cards
        print(f"evaluated without {len(completed.unavailable)} prefetch key(s): see above", file=sys.stderr)
        return 3
    return 0


async def _complete(settings: Settings, ruleset: RuleSet, request: HookRequest) -> Completed:
    """Complete the request as the service does (service.prefetching): from an allow-listed fhirServer."""
    import httpx

    from service.prefetching import complete_request, fhir_client

    timeout = httpx.Timeout(settings.fhir_timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
        templates = ruleset.prefetch.get(request.hook, {})
        return await complete_request(fhir_client(http, settings), ruleset, request, templates)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# How `lumbar serve` runs uvicorn (the benchmark's baseline uses the same, bench/baseline.py).
def uvicorn_options() -> dict[str, Any]:
    """How ``lumbar serve`` runs uvicorn (the bench's baseline server runs the same)."""
    from service.http_protocol import GuardedHttpToolsProtocol  # imported only to serve

    # httptools, with header size and time limits (service/http_protocol.py)
    return {**UVICORN_OPTIONS, "http": GuardedHttpToolsProtocol}


UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "access_log": False,
    "log_config": None,
    "proxy_headers": False,
    "timeout_keep_alive": 5,
    # Connections (and requests) per worker: below the usual 1,024 open-file limit, so that idle sockets
    # cannot lock callers out; beyond it uvicorn answers 503.
    "limit_concurrency": 900,
}


def _metrics_directory() -> str | None:
    """Give the workers a shared, empty metrics directory (multiprocess Prometheus), unless one is set.

    Returns the directory it created (to remove after the server stops), or None.

    It must be set before any worker imports prometheus_client; a directory named by the operator is emptied
    of the previous run's files, as the client library requires.
    """
    directory = os.environ.get(MULTIPROC_ENV)  # service.metrics is not imported here: see above
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    created = tempfile.mkdtemp(prefix="lumbar-metrics-")
    os.environ[MULTIPROC_ENV] = created
    return created


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.preflight import SettingProblem, check_clients, check_database

    settings = _settings()
    allow = settings.allow_failing_tests or args.allow_failing_tests
    try:
        check_clients(settings)
    except SettingProblem as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        _, failures = load_tested(settings.rules_dir, allow_failing_tests=allow)
    except RuleSetError as exc:
        print(render_all(exc.diagnostics), file=sys.stderr)
        print("refusing to start: the rule catalogue is invalid", file=sys.stderr)
        return 1
    except RuleTestsFailed as exc:
        print("\n".join(exc.failures), file=sys.stderr)
        print(
            "refusing to start: the rule catalogue's own tests fail (`lumbar test` shows them; "
            "--allow-failing-tests serves it anyway)",
            file=sys.stderr,
        )
        return 1
    if failures:
        print("\n".join(failures), file=sys.stderr)
        print(
            f"WARNING: serving a rule catalogue whose own tests fail ({len(failures)} case(s)), as "
            "--allow-failing-tests / LUMBAR_ALLOW_FAILING_TESTS asks; a reload never goes live with one",
            file=sys.stderr,
        )
        os.environ["LUMBAR_ALLOW_FAILING_TESTS"] = "true"  # the workers load the same catalogue

    try:
        asyncio.run(check_database(settings))  # once, before any worker starts
    except SettingProblem as exc:
        print(exc, file=sys.stderr)
        return 2
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # a worker that cannot start stops the server
    created = _metrics_directory()
    try:
        uvicorn.run(
            "service.app:create_app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            **uvicorn_options(),
        )
    finally:
        if created:
            shutil.rmtree(created, ignore_errors=True)
    return 0


def _bound(value: str | None, *, end: bool) -> datetime | None:
    from service.report import parse_bound

    if value is None:
        return None
    try:
        return parse_bound(value, end=end)
    except ValueError:
        print(f"error: not a date or date-time: {value!r} (use YYYY-MM-DD or ISO 8601)", file=sys.stderr)
        raise SystemExit(2) from None


def _with_database(work: Any) -> Any:
    """Run ``work(database)`` on the configured, migrated database, and close it."""
    from service.preflight import shown_url
    from service.storage.database import Database

    settings = _settings()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the command's output is the report, not logs
    print(f"database: {shown_url(settings.database_url)}", file=sys.stderr)  # which one, wherever you stand

    async def run() -> Any:
        database = Database(settings.database_url)
        try:
            await database.migrate()
            return await work(database)
        finally:
            await database.close()

    return asyncio.run(run())


def cmd_report(args: argparse.Namespace) -> int:
    from service.report import build_report

    since, until = _bound(args.since, end=False), _bound(args.until, end=True)
    result = _with_database(lambda db: build_report(db, since=since, until=until, service=args.service))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.to_table(), end="")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    days = args.days if args.days is not None else _settings().audit_retention_days
    before = _bound(args.before, end=False) or datetime.now(UTC) - timedelta(days=days)
    deleted = _with_database(lambda db: db.purge(before))
    print(f"purged audit records before {before.isoformat(timespec='seconds')}: " + json.dumps(deleted))
    return 0


def cmd_demo_fhir(args: argparse.Namespace) -> int:
    import uvicorn

    from service.demo_fhir import BUNDLED_DEMO, DemoDataError, create_demo_app, load_demo

    folder = Path(args.data) if args.data else BUNDLED_DEMO
    try:
        store = load_demo(folder)
    except DemoDataError as exc:
        print(f"error: demo data: {exc}", file=sys.stderr)
        return 2
    patients = len(store.resources.get("Patient", {}))
    print(
        f"Lumbar CDS demo FHIR server (read-only, open): {patients} patients, {store.count()} resources from "
        f"{folder}\nFHIR base: http://{args.host}:{args.port}/fhir",
        flush=True,
    )
    uvicorn.run(create_demo_app(store), host=args.host, port=args.port, log_level="info", access_log=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumbar", description="Lumbar CDS: CDS Hooks decision support for low back pain"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--allow-failing-tests",
        action="store_true",
        help="start even if the catalogue's embedded tests fail (logged loudly; reloads still refuse)",
    )
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate rule files and value sets")
    check.add_argument("paths", nargs="*", metavar="PATH")
    check.set_defaults(func=cmd_check)
    test = sub.add_parser("test", help="run the test cases embedded in rule files")
    test.add_argument("paths", nargs="*", metavar="PATH")
    test.add_argument("-k", "--rule", action="append", metavar="RULE_ID", help="only this rule (repeatable)")
    test.add_argument("-v", "--verbose", action="store_true")
    test.set_defaults(func=cmd_test)
    explain = sub.add_parser("explain", help="evaluate one CDS Hooks request offline and explain every rule")
    explain.add_argument("request", metavar="REQUEST.json")
    explain.add_argument("--now", help="evaluation time (FHIR dateTime); default: the current time")
    explain.add_argument("--rules", help="catalogue folder; default: LUMBAR_RULES_DIR")
    explain.add_argument(
        "-k", "--rule", action="append", metavar="RULE_ID", help="only this rule (repeatable)"
    )
    explain.set_defaults(func=cmd_explain)
    report = sub.add_parser("report", help="per-rule statistics from the audit trail and feedback")
    report.add_argument("--json", action="store_true", help="JSON instead of a table")
    report.add_argument("--since", metavar="DATE", help="from this date or date-time (UTC)")
    report.add_argument("--until", metavar="DATE", help="up to this date (inclusive) or date-time")
    report.add_argument("--service", metavar="ID", help="only this CDS service")
    report.set_defaults(func=cmd_report)
    demo = sub.add_parser("demo-fhir", help="an open read-only FHIR R4 server with the demo patients")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8090)
    demo.add_argument(
        "--data", metavar="DIR", help="a folder of FHIR JSON files (default: the bundled patients)"
    )
    demo.set_defaults(func=cmd_demo_fhir)
    purge = sub.add_parser("purge", help="delete audit records older than the retention period")
    when = purge.add_mutually_exclusive_group()
    when.add_argument("--days", type=int, help="keep this many days (default: LUMBAR_AUDIT_RETENTION_DAYS)")
    when.add_argument("--before", metavar="DATE", help="delete records before this date or date-time")
    purge.set_defaults(func=cmd_purge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
