"""A closed-loop HTTP/1.1 load generator on raw asyncio streams, run as its own process.

C keep-alive connections each send the same pre-encoded POST, wait for the whole response (status line,
headers, a ``Content-Length`` or chunked body) and send again at once. Requests that start during the warm-up
are not counted; after warm-up + duration no new request starts, and anything still unanswered after a grace
period counts as an error. Much cheaper per request than an httpx client, so the client is less often the
bottleneck. With ``--tokens FILE`` every request carries its own bearer token from the file (minted ahead by
the bench, so that signing costs the client nothing during the window).

    python -m bench.loadgen --port 8000 --path /cds-services/lumbar-patient-view --body request.json \\
        --connections 16 --warmup 1 --duration 5

Prints one JSON object: requests, errors (non-200 answers and socket errors), throughput (answered requests
per second of the measured window), latency percentiles in ms, and the client's own CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client understands it."""


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, counted requests only
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    total: int = 0  # every request sent, warm-up included
    first_counted: float | None = None
    last_done: float = 0.0


def encode_request(host: str, port: int, path: str, body: bytes, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"{auth}"
        "Content-Type: application/json\r\n"
        "Accept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One response: (status, body, keep the connection open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError("header block too large")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    close = parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected: the empty line
                break
            body += await reader.readexactly(size + 2)
            del body[-2:]
        return status, bytes(body), not close
    if length is None:
        if status in (204, 304) or 100 <= status < 200:
            return status, b"", not close
        raise ProtocolError("response without Content-Length")
    return status, await reader.readexactly(length), not close


class Requests:
    """The request to send next: the same bytes every time, or, with tokens (``--tokens``), each request with
    its own pre-encoded bearer token (a fresh ``jti`` each, as a replay-checking server demands)."""

    def __init__(self, host: str, port: int, path: str, body: bytes, tokens: list[str] | None) -> None:
        self.same = None if tokens else encode_request(host, port, path, body)
        self.each = iter([encode_request(host, port, path, body, t) for t in tokens or ()])

    def next(self) -> bytes | None:
        return self.same if self.same is not None else next(self.each, None)


async def connection(
    host: str, port: int, requests: Requests, counted_from: float, stop_at: float, stats: Stats
) -> None:
    """One keep-alive connection, sending back to back until ``stop_at`` (reconnecting after errors)."""
    writer: asyncio.StreamWriter | None = None
    reconnects = 0
    try:
        while time.perf_counter() < stop_at:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError as exc:
                    stats.errors[f"connect: {type(exc).__name__}"] += 1
                    reconnects += 1
                    if reconnects > 1000:
                        return
                    await asyncio.sleep(0.05)  # bounded: the loop ends at stop_at
                    continue
            request = requests.next()
            if request is None:
                stats.errors["tokens exhausted"] += 1
                return
            started = time.perf_counter()
            counted = started >= counted_from
            stats.total += 1
            try:
                writer.write(request)
                status, _, keep = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError) as exc:
                if counted:
                    stats.errors[type(exc).__name__] += 1
                writer.close()
                writer = None
                continue
            done = time.perf_counter()
            if counted:
                if stats.first_counted is None:
                    stats.first_counted = started
                stats.last_done = max(stats.last_done, done)
                stats.latencies.append(done - started)
                if status == 200:
                    stats.ok += 1
                else:
                    stats.errors[f"HTTP {status}"] += 1
            if not keep:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarise(stats: Stats, args: argparse.Namespace, wall: float, cpu: float) -> dict[str, Any]:
    ordered = sorted(stats.latencies)
    window = (stats.last_done - stats.first_counted) if stats.first_counted is not None else 0.0
    errors = sum(stats.errors.values())
    ms = {f"p{q:g}": round(percentile(ordered, q) * 1000, 3) for q in (50, 90, 99)}
    ms["max"] = round(ordered[-1] * 1000, 3) if ordered else float("nan")
    ms["mean"] = round(sum(ordered) / len(ordered) * 1000, 3) if ordered else float("nan")
    return {
        "client": "python-asyncio",
        "connections": args.connections,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "window_s": round(window, 4),
        "requests": stats.ok + errors,
        "ok": stats.ok,
        "errors": errors,
        "error_kinds": dict(stats.errors),
        "requests_including_warmup": stats.total,
        "throughput": round(stats.ok / window, 2) if window > 0 else 0.0,
        "latency_ms": ms,
        "client_cpu_s": round(cpu, 3),
        "client_cpu_share": round(cpu / wall, 3) if wall > 0 else 0.0,
    }


async def run(args: argparse.Namespace, body: bytes) -> dict[str, Any]:
    tokens = args.tokens.read_text().split() if args.tokens else None
    requests = Requests(args.host, args.port, args.path, body, tokens)  # encoded before the clock starts
    stats = Stats()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
    counted_from = wall0 + args.warmup
    stop_at = counted_from + args.duration
    tasks = [
        asyncio.create_task(connection(args.host, args.port, requests, counted_from, stop_at, stats))
        for _ in range(args.connections)
    ]
    # Every loop above ends by stop_at; a request still unanswered after the grace period is an error.
    _, pending = await asyncio.wait(tasks, timeout=args.warmup + args.duration + args.grace)
    for task in pending:
        task.cancel()
        stats.errors["timeout"] += 1
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall0
    return summarise(stats, args, wall, usage.ru_utime + usage.ru_stime - cpu0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="closed-loop HTTP/1.1 POST load generator (JSON output)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/cds-services/lumbar-patient-view")
    parser.add_argument("--body", type=Path, required=True, help="file holding the request body")
    parser.add_argument("--connections", "-c", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted")
    parser.add_argument("--duration", "-d", type=float, default=5.0, help="seconds counted")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait for the last answers")
    parser.add_argument("--tokens", type=Path, help="bearer tokens, one per request")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    if not 1 <= args.connections <= 256 or not 0 < args.duration <= 120 or not 0 <= args.warmup <= 60:
        parser.error("connections 1-256, duration 0-120 s, warm-up 0-60 s")
    try:
        import uvloop  # the client should cost as little CPU as the server's loop does
    except ImportError:
        result = asyncio.run(run(args, args.body.read_bytes()))
    else:
        result = uvloop.run(run(args, args.body.read_bytes()))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
