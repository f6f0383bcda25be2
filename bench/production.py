"""The production path: what a real deployment runs, against the bare endpoint with as many workers.

The service with ``LUMBAR_AUTH=jwt`` (an ES384 token with a fresh ``jti`` on every request, checked against
its JWK and written to the replay store), on PostgreSQL (a database of the bench's own on the machine's
server, dropped afterwards), with ``--workers 2``; beside it the bare service (auth off, SQLite, 2 workers)
and the baseline endpoint with 2 workers. The three are driven in turn, round after round, with the same
request, so other work on the machine weighs on all of them. Tokens are minted before each run and handed to
the load generator in a file, so signing costs the client nothing during the window.

PostgreSQL: ``LUMBAR_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``, the
machine's server with trust authentication); when it does not answer the section is skipped with a note.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from joserfc import jwt
from joserfc.jwk import ECKey

from bench import scenarios, servers
from bench.servers import Server

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("LUMBAR_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ISSUER = "https://ehr.bench.example"
WORKERS = 2
Drive = Callable[..., dict[str, Any]]


class Unavailable(Exception):
    """PostgreSQL cannot be reached: the production path is not measured."""


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def bench_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, as a ``LUMBAR_DATABASE_URL``; dropped afterwards."""
    name = f"lumbar_bench_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise Unavailable(f"PostgreSQL at {ADMIN_URL} does not answer ({type(exc).__name__})") from None
    try:
        base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Mint:
    """ES384 tokens for one trusted client, each with its own ``jti``."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-384", parameters={"kid": "bench-ehr"})

    def clients_file(self, path: Path) -> Path:
        document = {"clients": [{"issuer": ISSUER, "jwks": {"keys": [self.key.as_dict(private=False)]}}]}
        path.write_text(json.dumps(document))
        return path

    def write(self, path: Path, count: int, audience: str) -> Path:
        now = int(time.time())
        header = {"alg": "ES384", "typ": "JWT", "kid": "bench-ehr"}
        tokens = [
            jwt.encode(
                header,
                {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex},
                self.key,
                algorithms=["ES384"],
            )
            for _ in range(count)
        ]
        path.write_text("\n".join(tokens))
        return path


def _start(name: str, work: Path, env: dict[str, str]) -> Server:
    port = servers.free_port()
    args = ["-m", "service", "serve", "--host", servers.HOST, "--port", str(port), "--workers", str(WORKERS)]
    full = {**os.environ, "LUMBAR_LOG_LEVEL": "warning", "LUMBAR_RULES_WATCH": "false", **env}
    full["LUMBAR_PUBLIC_BASE_URL"] = f"http://{servers.HOST}:{port}"  # the JWT audience
    return servers.spawn(name, args, full, work / f"{name}.log", ROOT)


def measure(
    drive: Drive, body: Path, work: Path, live: list[Server], rounds: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Rounds of (baseline, bare, production) at 16 connections; medians and per-round ratios."""
    try:
        database = bench_database()
        url = database.__enter__()
    except Unavailable as exc:
        return {"skipped": str(exc)}
    started: list[Server] = []
    try:
        mint = Mint()
        clients = mint.clients_file(work / "bench-clients.json")
        port = servers.free_port()
        baseline = servers.spawn(
            "baseline-2w",
            ["-m", "bench.baseline", "--host", servers.HOST, "--port", str(port), "--workers", str(WORKERS)],
            dict(os.environ),
            work / "baseline-2w.log",
            ROOT,
        )
        bare = _start(
            "bare-2w",
            work,
            {"LUMBAR_AUTH": "off", "LUMBAR_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'bare-2w.db'}"},
        )
        production = _start(
            "production-2w",
            work,
            {"LUMBAR_AUTH": "jwt", "LUMBAR_CLIENTS_FILE": str(clients), "LUMBAR_DATABASE_URL": url},
        )
        started = [baseline, bare, production]
        live.extend(started)
        for server in started:
            servers.wait_ready(server)
        audience = f"http://{servers.HOST}:{production.port}{scenarios.SERVICE_PATH}"
        needed = 15_000
        runs: list[dict[str, Any]] = []
        for _ in range(rounds):
            tokens = mint.write(work / "tokens.txt", needed, audience)
            one = {
                "baseline": drive(baseline, body, 16, warmup_s, duration_s),
                "bare": drive(bare, body, 16, warmup_s, duration_s),
                "production": drive(production, body, 16, warmup_s, duration_s, tokens=tokens),
            }
            sent = one["production"]["requests_including_warmup"]
            needed = max(needed, int(sent * 1.5))  # enough for the next round, whatever the machine does
            runs.append(one)
        return _summary(runs) | {"memory_production": servers.memory_mb(production.pid)}
    finally:
        for server in started:
            servers.stop(server)
            live.remove(server)
        database.__exit__(None, None, None)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(side: str, pick: Callable[[dict[str, Any]], float]) -> float:
        return round(statistics.median(pick(r[side]) for r in runs), 3)

    sides = {}
    for side in ("baseline", "bare", "production"):
        sides[side] = {
            "throughput": med(side, lambda m: m["throughput"]),
            "p50_ms": med(side, lambda m: m["latency_ms"]["p50"]),
            "p99_ms": med(side, lambda m: m["latency_ms"]["p99"]),
            "cpu_ms_per_request": med(side, lambda m: m["server_cpu_ms_per_request"]),
            "errors": sum(r[side]["errors"] for r in runs),
        }
    ratios = [r["production"]["throughput"] / r["baseline"]["throughput"] for r in runs]
    bare_ratios = [r["bare"]["throughput"] / r["baseline"]["throughput"] for r in runs]
    return {
        "rounds": len(runs),
        "workers": WORKERS,
        "connections": 16,
        **sides,
        "throughput_ratios": [round(x, 4) for x in ratios],
        "throughput_ratio": round(statistics.median(ratios), 4),  # production / baseline
        "bare_throughput_ratio": round(statistics.median(bare_ratios), 4),
        "production_vs_bare": round(
            statistics.median(r["production"]["throughput"] / r["bare"]["throughput"] for r in runs), 4
        ),
        "runs": runs,
    }
